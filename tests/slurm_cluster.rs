//! `vmpilot kill-all --cluster` against a real two-node Slurm: the test bed's node and `n2`,
//! a second slurmd on the same machine in a network namespace (tests/testbed/up.sh), both in
//! the partition `pair`. Pilots run through the project's own `vmpilot.sbatch` on each node;
//! their guests ignore ACPI shutdown and the pilots have a long grace, so Slurm SIGKILLs them
//! after KillWait and each node's Epilog (`slurm-scripts/epilog.sh`, `vmpilot recover
//! --job`) has to restore its node. Run with `VMPILOT_IT=slurm` (CI does).
//!
//! Both "nodes" share one filesystem, so each gets its own state directory: the job's
//! `VMPILOT_BIN` and the Epilog hook set `VMPILOT_STATE_DIR` from `SLURMD_NODENAME`, which
//! slurmd gives both the job and the Epilog (one config file, one state dir per node, as on a
//! real cluster where /var/lib/vmpilot is node-local).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::coordinator::{Mode, TestCoordinator};
use common::slurm::{Jobs, enabled, repo, sbatch, serial, sh, wait_done, wait_running};
use common::{Node, bin};
use serde_json::Value;

const SECRET: &str = "slurm-cluster-secret-0123456789";

/// Removes the Epilog hook when dropped (a hook left behind runs for every later job).
struct Hook(PathBuf);

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Write an executable shell script.
fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The state directory of `slurm_node` under the test's directory.
fn state_of(node: &Node, slurm_node: &str) -> PathBuf {
    node.dir.path().join("nodes").join(slurm_node)
}

fn record(node: &Node, slurm_node: &str, lease: &str) -> Option<Value> {
    let p = state_of(node, slurm_node)
        .join("leases")
        .join(format!("{lease}.json"));
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn wait_reserved(node: &Node, slurm_node: &str, lease: &str) -> Value {
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = record(node, slurm_node, lease)
            && r["state"] == "reserved"
        {
            return r;
        }
        assert!(
            std::time::Instant::now() < until,
            "{lease} on {slurm_node} never reserved: {:?}",
            record(node, slurm_node, lease)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `vmpilot` with this test's config and `slurm_node`'s state dir.
fn vmpilot(node: &Node, slurm_node: &str, args: &[&str]) -> std::process::Output {
    node.cmd(args)
        .env("VMPILOT_STATE_DIR", state_of(node, slurm_node))
        .output()
        .unwrap()
}

/// The simulated host of `slurm_node`: lease ids holding a share, and a guest's state.
fn host(node: &Node, slurm_node: &str) -> Value {
    let bytes = std::fs::read(state_of(node, slurm_node).join("simulated-host.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Types of the events waiting in `slurm_node`'s spool.
fn spooled_types(node: &Node, slurm_node: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state_of(node, slurm_node).join("spool")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| serde_json::from_slice::<Value>(&std::fs::read(p).ok()?).ok())
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn kill_all_cluster_cancels_pilots_on_both_nodes_and_each_epilog_restores_its_node() {
    if !enabled("slurm") {
        return;
    }
    let _serial = serial();
    let n2 = sh("sinfo", &["-h", "-n", "n2", "-o", "%T"]);
    assert!(
        matches!(n2.trim(), "idle" | "mixed" | "allocated"),
        "node n2 is `{}`, not usable\nhint: run `sudo tests/testbed/up.sh` (it starts n2's slurmd)",
        n2.trim()
    );
    let main = sh("hostname", &["-s"]).trim().to_string();
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let node = Node::with_coordinator(&coordinator.url, SECRET, "timeout = \"2s\"\n");
    let nodes = node.dir.path().join("nodes");
    // The pilot's binary as the job sees it: the real one, with this node's state dir.
    let wrapper = node.dir.path().join("vmpilot-on-node");
    script(
        &wrapper,
        &format!(
            "#!/bin/sh\nVMPILOT_STATE_DIR={}/$SLURMD_NODENAME exec {} \"$@\"\n",
            nodes.display(),
            bin()
        ),
    );
    let hook = Hook(PathBuf::from(format!(
        "/etc/vmpilot-testbed/epilog.d/50-cluster-{}",
        std::process::id()
    )));
    script(
        &hook.0,
        &format!(
            "#!/bin/sh\nVMPILOT_BIN={} VMPILOT_CONFIG={} exec {}/slurm-scripts/epilog.sh \"$@\"\n",
            wrapper.display(),
            node.config.display(),
            repo().display()
        ),
    );
    let mut jobs = Jobs::default();
    let out = node.dir.path().join("job-%j.out").display().to_string();
    let sbatch_script = repo().join("slurm-scripts/vmpilot.sbatch");
    let mut ids = Vec::new();
    for (slurm_node, lease) in [(main.as_str(), "pair-a"), ("n2", "pair-b")] {
        std::fs::create_dir_all(state_of(&node, slurm_node)).unwrap();
        let id = jobs.add(&sbatch(
            &[
                "-p",
                "pair",
                "-w",
                slurm_node,
                "-t",
                "5",
                "--mem",
                "1G",
                "-c",
                "1",
                "-o",
                &out,
                "-e",
                &out,
                &sbatch_script.display().to_string(),
                // Longer than KillWait (5 s): the pilot cannot finish, the Epilog must.
                "--grace",
                "60s",
            ],
            &[
                ("VMPILOT_BIN", wrapper.display().to_string()),
                ("VMPILOT_CONFIG", node.config.display().to_string()),
                ("VMPILOT_LEASE_ID", lease.to_string()),
            ],
        ));
        ids.push((slurm_node.to_string(), lease, id));
    }
    for (slurm_node, lease, id) in &ids {
        wait_running(id);
        wait_reserved(&node, slurm_node, lease);
        let add = vmpilot(
            &node,
            slurm_node,
            &[
                "simulated",
                "add-guest",
                "--name",
                &format!("{lease}-vm"),
                "--lease",
                lease,
                "--ignore-shutdown",
            ],
        );
        assert!(add.status.success(), "{}", common::stderr(&add));
    }

    let kill = node.run(&["kill-all", "--cluster", "--yes", "--reason", "cluster test"]);
    let table = common::stdout(&kill);
    assert_eq!(
        kill.status.code(),
        Some(0),
        "{table}\n{}",
        common::stderr(&kill)
    );
    for (slurm_node, lease, id) in &ids {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id.as_str()))
            .unwrap_or_else(|| panic!("job {id} not reported:\n{table}"));
        assert!(
            line.contains(slurm_node.as_str()) && line.ends_with("gone"),
            "{line}"
        );
        // kill-all waited for the job to leave the queue, Epilog included.
        let j = wait_done(id, Duration::from_secs(5));
        assert_eq!(j["JobState"], "CANCELLED", "{j:?}");
        let r = record(&node, slurm_node, lease).unwrap();
        assert_eq!(r["state"], "unreserved", "{slurm_node}: {r}");
        assert_eq!(r["end_reason"], "cancelled", "{r}");
        assert_eq!(r["job_id"], id.as_str());
        let events = common::history_events(&r);
        assert!(
            events.iter().any(|e| e == "pilot-lost"),
            "{slurm_node}: not finished by its Epilog: {events:?}"
        );
        let h = host(&node, slurm_node);
        assert_eq!(
            h["reservations"],
            serde_json::json!({}),
            "{slurm_node}: {h}"
        );
        assert_eq!(h["guests"][0]["state"], "shut-off", "{slurm_node}: {h}");
        assert_eq!(r["node"], "testnode", "the config's node_name");
        // The Epilog's `recovered` event: delivered from this machine's node; from n2 the
        // coordinator on the host's loopback is out of reach, so it waits in n2's spool.
        let delivered = coordinator.types_for(lease);
        let spooled = spooled_types(&node, slurm_node);
        assert!(
            delivered.contains(&"recovered".to_string())
                || slurm_node == "n2" && spooled.contains(&"recovered".to_string()),
            "{lease}: delivered {delivered:?}, spooled {spooled:?}"
        );
    }
    // Neither node was drained by a failed Epilog.
    for slurm_node in [main.as_str(), "n2"] {
        let state = sh("sinfo", &["-h", "-n", slurm_node, "-o", "%T"]);
        assert!(
            matches!(state.trim(), "idle" | "mixed"),
            "{slurm_node}: {state}"
        );
    }
    drop(hook);
}
