//! The whole loop of issue 5 on real components: the reference coordinator
//! (`vmpilot-coordinator`, real HTTP on 127.0.0.1, real SQLite) starting its guest templates
//! through the test bed's real libvirtd (QEMU under TCG) when a lease is reserved, and — with
//! the real single-node Slurm — submitting the pilot itself through `POST /v1/pilots`.
//!
//! Runs when `VMPILOT_IT` names `libvirt` (and `slurm` for the batch loop); CI sets both.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::refcoord::{Coord, Http, SECRET, TOKEN};
use common::slurm::{Jobs, enabled, repo, serial, sh, wait_done};
use common::{Node, libvirt_lock};
use serde_json::{Value, json};

const URI: &str = "qemu:///system";

fn virsh(args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .output()
        .expect("cannot run virsh (is libvirt-clients installed?)")
}

/// Write the test bed's tiny guest as a template file (`memory_kib` of memory).
fn template(dir: &Path, file: &str, memory_kib: &str) -> String {
    let console = dir.join(format!("{file}.console.log"));
    let xml = sh(
        &repo()
            .join("tests/testbed/guest-xml.sh")
            .display()
            .to_string(),
        &[
            "template-name",
            "",
            memory_kib,
            &console.display().to_string(),
            "",
            "",
        ],
    );
    let path = dir.join(file);
    std::fs::write(&path, xml).unwrap();
    path.display().to_string()
}

/// Destroys and undefines every domain whose name starts with one of the prefixes.
struct Domains(Vec<String>);

impl Drop for Domains {
    fn drop(&mut self) {
        let out = virsh(&["list", "--all", "--name"]);
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            if self.0.iter().any(|p| name.starts_with(p.as_str())) {
                let _ = virsh(&["destroy", name]);
                let _ = virsh(&["undefine", "--managed-save", name]);
            }
        }
    }
}

/// Poll `GET /v1/leases/{lease}` until `done` holds (or fail after `limit`).
fn wait_lease(
    http: &Http,
    url: &str,
    lease: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let until = Instant::now() + limit;
    loop {
        let (status, body) = http.get(&format!("{url}/v1/leases/{lease}"));
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            Instant::now() < until,
            "lease {lease}: {what} did not happen within {limit:?}; last: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An event of `lease` (`epoch`, `seq`) from node `e2e-node`, as a pilot would post it,
/// with `fields` for its type.
fn node_event(lease: &str, epoch: u64, kind: &str, seq: u64, fields: Value) -> Value {
    let mut e = json!({
        "protocol": 1, "event_id": uuid::Uuid::new_v4().to_string(), "type": kind,
        "lease_id": lease, "epoch": epoch, "seq": seq, "node": "e2e-node", "job_id": null,
        "time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
    });
    for (k, v) in fields.as_object().unwrap() {
        e[k] = v.clone();
    }
    e
}

fn launched<'a>(lease: &'a Value, template: &str) -> &'a Value {
    lease["launched"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["template"] == template))
        .unwrap_or(&Value::Null)
}

fn domstate(name: &str) -> String {
    let out = virsh(&["domstate", name]);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        format!(
            "undefined ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

#[test]
fn reserved_starts_the_templates_with_lease_metadata_and_the_end_retires_them() {
    if !enabled("libvirt") {
        return;
    }
    let _lock = libvirt_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let tiny = template(dir.path(), "tiny.xml", "131072");
    // 4 GiB: more than the lease below has.
    let big = template(dir.path(), "big.xml", "4194304");
    let coord = Coord::start(&format!(
        "[guests]\ntemplates = [\"{tiny}\", \"{big}\"]\nallowed_uris = [\"qemu:///system\"]\n"
    ));
    let lease = format!("e2e-g-{}", std::process::id());
    let _domains = Domains(vec![format!("tiny-{lease}-"), format!("big-{lease}-")]);
    let http = Http::new();
    let event = |kind: &str, seq: u64, fields: Value| node_event(&lease, 2, kind, seq, fields);
    let deadline = (time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, _) = http.post_event(
        &coord.url,
        &event(
            "reserved",
            0,
            json!({"memory_mib": 512, "cpus": 1, "deadline": deadline, "grace_secs": 30,
                   "hypervisor": {"backend": "libvirt", "uri": URI}}),
        ),
    );
    assert_eq!(status, 200);
    let l = wait_lease(
        &http,
        &coord.url,
        &lease,
        Duration::from_secs(60),
        "both launches recorded",
        |l| l["launched"].as_array().is_some_and(|a| a.len() == 2),
    );
    let domain = format!("tiny-{lease}-2");
    assert_eq!(launched(&l, "tiny")["domain"], domain.as_str(), "{l}");
    assert_eq!(
        launched(&l, "tiny")["status"],
        "started",
        "{l}\n{}",
        coord.log()
    );
    let refused = launched(&l, "big");
    assert_eq!(refused["status"], "failed", "{l}");
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("needs 4096 MiB") && detail.contains("384 of its 512 MiB"),
        "the refusal names the sizes (the tiny guest took 128 MiB first): {detail}"
    );
    assert!(
        domstate(&format!("big-{lease}-2")).starts_with("undefined"),
        "a refused template leaves no definition behind"
    );
    assert_eq!(domstate(&domain), "running");
    // The guest carries the lease's metadata, as the pilot reads it.
    let meta = virsh(&["metadata", &domain, "https://vmpilot.dev/xmlns/lease/1"]);
    let meta = String::from_utf8_lossy(&meta.stdout);
    assert!(
        meta.contains(&format!("id=\"{lease}\"")) && meta.contains("epoch=\"2\""),
        "{meta}"
    );
    // The pilot's part at lease end: stop the guest and report its fate.
    assert!(virsh(&["destroy", &domain]).status.success());
    let (status, _) = http.post_event(
        &coord.url,
        &event(
            "unreserved",
            1,
            json!({"reason": "deadline", "guests": [{"name": domain, "fate": "destroyed"}]}),
        ),
    );
    assert_eq!(status, 200);
    let l = wait_lease(
        &http,
        &coord.url,
        &lease,
        Duration::from_secs(30),
        "the guest retired",
        |l| launched(l, "tiny")["status"] == "retired",
    );
    assert_eq!(l["state"], "unreserved");
    assert_eq!(l["guests"][0]["fate"], "destroyed");
    assert!(domstate(&domain).starts_with("undefined"), "{l}");
}

/// Issue #12, item 4, the coordinator's side, on real libvirt: when a lease ends, a guest
/// the coordinator launched for it that still runs (the pilot did not stop it) is stopped
/// and undefined, not left running; and a `reserved` that arrives after the lease's end (a
/// late delivery) starts nothing. vmpilot 0.1 kept the running guest ("still running") and
/// launched the templates for the late `reserved`.
#[test]
fn the_end_of_a_lease_stops_its_running_guests_and_a_late_reserved_starts_none() {
    if !enabled("libvirt") {
        return;
    }
    let _lock = libvirt_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let tiny = template(dir.path(), "tiny.xml", "131072");
    let coord = Coord::start(&format!(
        "[guests]\ntemplates = [\"{tiny}\"]\nallowed_uris = [\"qemu:///system\"]\n"
    ));
    let lease = format!("e2e-end-{}", std::process::id());
    let late = format!("e2e-late-{}", std::process::id());
    let _domains = Domains(vec![format!("tiny-{lease}-"), format!("tiny-{late}-")]);
    let http = Http::new();
    let event =
        |lease: &str, kind: &str, seq: u64, fields: Value| node_event(lease, 1, kind, seq, fields);
    let deadline = (time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let reserved = json!({"memory_mib": 512, "cpus": 1, "deadline": deadline, "grace_secs": 30,
                          "hypervisor": {"backend": "libvirt", "uri": URI}});
    let (status, _) = http.post_event(&coord.url, &event(&lease, "reserved", 0, reserved.clone()));
    assert_eq!(status, 200);
    wait_lease(
        &http,
        &coord.url,
        &lease,
        Duration::from_secs(60),
        "the launch recorded",
        |l| launched(l, "tiny")["status"] == "started",
    );
    let domain = format!("tiny-{lease}-1");
    assert_eq!(domstate(&domain), "running");
    // The lease ends with its guest still running (here: the pilot never saw it).
    let (status, _) = http.post_event(
        &coord.url,
        &event(
            &lease,
            "unreserved",
            1,
            json!({"reason": "deadline", "guests": []}),
        ),
    );
    assert_eq!(status, 200);
    let l = wait_lease(
        &http,
        &coord.url,
        &lease,
        Duration::from_secs(30),
        "the guest retired",
        |l| launched(l, "tiny")["status"] != "started",
    );
    assert_eq!(
        launched(&l, "tiny")["status"],
        "retired",
        "{l}\n{}",
        coord.log()
    );
    assert!(domstate(&domain).starts_with("undefined"), "{l}");

    // A lease whose end arrives before its `reserved` (delivered late): nothing starts.
    let (status, _) = http.post_event(
        &coord.url,
        &event(
            &late,
            "unreserved",
            1,
            json!({"reason": "cancelled", "guests": []}),
        ),
    );
    assert_eq!(status, 200);
    let (status, _) = http.post_event(&coord.url, &event(&late, "reserved", 0, reserved));
    assert_eq!(status, 200);
    // A launch takes well under this on the test bed (the first part of this test).
    std::thread::sleep(Duration::from_secs(3));
    let (_, l) = http.get(&format!("{}/v1/leases/{late}", coord.url));
    assert_eq!(l["state"], "unreserved", "{l}");
    assert!(
        l["launched"].as_array().is_none_or(|a| a.is_empty()),
        "templates launched for an ended lease: {l}"
    );
    assert!(domstate(&format!("tiny-{late}-1")).starts_with("undefined"));
}

#[test]
fn a_pilot_submitted_through_the_api_gets_its_guest_and_gives_the_node_back_on_scancel() {
    if !enabled("slurm") || !enabled("libvirt") {
        return;
    }
    let _serial = serial();
    let _lock = libvirt_lock(false);
    let dir = tempfile::tempdir().unwrap();
    let tiny = template(dir.path(), "tiny.xml", "131072");
    let node_config = dir.path().join("node.toml");
    let submit = repo().join("slurm-scripts/vmpilot-submit");
    // Grace 4 s: inside the test bed's KillWait (5 s), and enough for destroying a TCG guest
    // (~1.4 s, more on a loaded machine) in the guests' share of it.
    let coord = Coord::start(&format!(
        "[pool]\nbatch_system = \"slurm\"\nsubmit_script = \"{}\"\nmemory = \"1G\"\ncpus = 1\ntime = \"5\"\n\
         grace = \"4s\"\nnode_config = \"{}\"\noutput = \"{}\"\n\n[guests]\ntemplates = [\"{tiny}\"]\nallowed_uris = [\"qemu:///system\"]\n",
        submit.display(),
        node_config.display(),
        dir.path().join("job-%j.out").display(),
    ));
    // The node's vmpilot config: libvirt, reporting to this coordinator. The test bed's
    // KillWait is 5 s and its guest has no ACPI handler until it has booted: destroy at once.
    let node = Node::with_coordinator(&coord.url, SECRET, "timeout = \"2s\"\n");
    let text = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("backend = \"simulated\"", "backend = \"libvirt\"")
        .replace("host_reserve = \"512M\"", "host_reserve = \"256M\"")
        // Fenced guests get a hard limit of memory + overhead; a TCG QEMU needs ~180 MiB
        // beside a 128 MiB guest.
        .replace("guest_overhead = \"64M\"", "guest_overhead = \"192M\"")
        .replace("[host]\n", "[host]\non_unreserve = \"destroy\"\n");
    std::fs::write(&node.config, text).unwrap();
    std::os::unix::fs::symlink(&node.config, &node_config).unwrap();
    let http = Http::new();
    let (status, body) = http.operator(
        &format!("{}/v1/pilots", coord.url),
        Some(TOKEN),
        json!({"count": 1}),
    );
    assert_eq!(status, 201, "{body}\n{}", coord.log());
    let id = body["job_ids"][0].as_str().unwrap().to_string();
    let mut jobs = Jobs::default();
    jobs.add(&id);
    let lease = format!("slurm-{id}");
    let _domains = Domains(vec![format!("tiny-{lease}-")]);
    let job_log =
        || std::fs::read_to_string(dir.path().join(format!("job-{id}.out"))).unwrap_or_default();
    let l = wait_lease(
        &http,
        &coord.url,
        &lease,
        Duration::from_secs(90),
        "reserved and its guest started",
        |l| launched(l, "tiny")["status"] == "started" || launched(l, "tiny")["status"] == "failed",
    );
    assert_eq!(l["job_id"], id.as_str());
    assert_eq!(
        launched(&l, "tiny")["status"],
        "started",
        "{l}\n{}",
        coord.log()
    );
    let domain = launched(&l, "tiny")["domain"].as_str().unwrap().to_string();
    assert_eq!(domstate(&domain), "running");
    sh("scancel", &[&id]);
    let j = wait_done(&id, Duration::from_secs(60));
    assert_eq!(j["JobState"], "CANCELLED", "{}", job_log());
    let l = wait_lease(
        &http,
        &coord.url,
        &lease,
        Duration::from_secs(30),
        "ended and its guest retired",
        |l| l["state"] == "unreserved" && launched(l, "tiny")["status"] != "started",
    );
    assert_eq!(l["reason"], "cancelled", "{l}");
    let fate = l["guests"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == domain.as_str()))
        .unwrap_or_else(|| panic!("no fate for {domain}: {l}\n{}", job_log()));
    assert!(
        matches!(fate["fate"].as_str(), Some("destroyed" | "shut-down")),
        "{fate}"
    );
    assert_eq!(launched(&l, "tiny")["status"], "retired", "{l}");
    assert!(domstate(&domain).starts_with("undefined"));
    // The node is back in batch mode and the coordinator knows the pilot's lease.
    let status = node.run(&["status", "--json"]);
    let s: Value = serde_json::from_slice(&status.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", common::stderr(&status)));
    assert_eq!(s["mode"], "batch", "{s}");
    let (_, pilots) = http.get(&format!("{}/v1/pilots", coord.url));
    let p = pilots["pilots"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["job_id"] == id.as_str()))
        .unwrap_or_else(|| panic!("{pilots}"));
    assert_eq!(p["lease_id"], lease.as_str(), "{p}");
}
