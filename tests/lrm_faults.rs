//! Batch-system failures before the pilot starts: a missing, hanging, failing or babbling
//! `squeue`/`qstat`. Each must give a clear error and leave the node untouched. The batch
//! tools here are FAKES (small shell scripts written by the test), because the failure modes
//! cannot be provoked on demand from the real Slurm; tests/slurm.rs covers the real one.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Node, stderr};

/// Write a fake tool into `dir`.
fn fake(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("#!/bin/sh\n# FAKE {name} for vmpilot's batch-failure tests\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A FAKE `squeue --json` body listing one running job `id` of `cpus` CPUs and `mem_mib`,
/// started 5 s ago with an hour's limit (the fields the pilot reads, as Slurm 22.05 prints them).
fn squeue_job(id: u32, cpus: u32, mem_mib: u32) -> String {
    format!(
        r#"now=$(/bin/date +%s); echo "{{\"jobs\": [{{\"job_id\": {id}, \"job_state\": \"RUNNING\", \"start_time\": $((now - 5)), \"time_limit\": 60, \"node_count\": 1, \"cpus\": {cpus}, \"memory_per_node\": {mem_mib}, \"nodes\": \"n1\"}}]}}""#
    )
}

fn run_under(node: &Node, fakes: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = node.cmd(&["run", "--memory", "512M", "--lease-id", "f"]);
    cmd.env("PATH", fakes);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn every_batch_system_failure_is_clear_and_changes_nothing() {
    let cases: [(&str, &str, &str, &str); 5] = [
        ("slurm", "missing", "", "`squeue` was not found"),
        (
            "slurm",
            "squeue",
            "exec /bin/sleep 30",
            "did not finish within",
        ),
        (
            "slurm",
            "squeue",
            "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
            "Unable to contact slurm controller",
        ),
        (
            "slurm",
            "squeue",
            r#"echo '{"jobs": [{"job_id": 4242, "job_state": "RUNNING", "time_limit": "soon"}]}'"#,
            "soon",
        ),
        (
            "pbs",
            "qstat",
            "echo 'qstat: Unknown Job Id 4242.server' >&2; exit 153",
            "Unknown Job Id",
        ),
    ];
    for (lrm, tool, body, needle) in cases {
        let node = Node::new("[lrm]\ncommand_timeout = \"1s\"\n");
        let bin = node.dir.path().join("fakebin");
        std::fs::create_dir_all(&bin).unwrap();
        if tool != "missing" {
            fake(&bin, tool, body);
        }
        let env: Vec<(&str, &str)> = match lrm {
            "slurm" => vec![("SLURM_JOB_ID", "4242")],
            _ => vec![("PBS_JOBID", "4242.server")],
        };
        let out = run_under(&node, &bin, &env);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{tool}/{needle}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(needle), "{tool}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("4242"),
            "the job is named: {}",
            stderr(&out)
        );
        assert!(
            node.record("f").is_none(),
            "{tool}: a lease record was written"
        );
        assert!(node.reservations().is_empty());
    }
}

#[test]
fn a_pilot_asking_for_more_than_its_job_was_given_is_refused() {
    let node = Node::new("");
    let bin = node.dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    fake(&bin, "squeue", &squeue_job(77, 2, 1024));
    for (args, needle) in [
        (vec!["--memory", "2G"], "more than the job's 1024 MiB"),
        (
            vec!["--memory", "512M", "--cpus", "3"],
            "more than the job's 2 CPUs",
        ),
    ] {
        let mut full = vec!["run", "--lease-id", "big"];
        full.extend(args.iter());
        let out = node
            .cmd(&full)
            .env("PATH", &bin)
            .env("SLURM_JOB_ID", "77")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
        assert!(node.record("big").is_none());
        assert!(node.reservations().is_empty());
    }
}

/// Issue #12, item 8: sizes are added with checked arithmetic. `--memory` plus the guest
/// overhead (2 x 64 MiB here) past 2^64 MiB wrapped around in release builds, and a 300 MiB
/// job got a lease of 18446744073709551204 MiB (a debug build panicked). Refused with exit 2
/// and nothing changed, with a job and without one (then the host's admission checks it).
#[test]
fn sizes_that_overflow_when_added_are_refused_and_change_nothing() {
    let node = Node::new("");
    let bin = node.dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    fake(&bin, "squeue", &squeue_job(78, 2, 300));
    // 2^64 - 16 MiB: plus 128 MiB of overhead it wraps to 112 MiB, which fits the job.
    let huge = "18446744073709551600M";
    for job in [Some("78"), None] {
        let mut cmd = node.cmd(&[
            "run",
            "--lease-id",
            "wrap",
            "--walltime",
            "1m",
            "--memory",
            huge,
        ]);
        cmd.env("PATH", &bin);
        if let Some(job) = job {
            cmd.env("SLURM_JOB_ID", job);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "job {job:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("more than any host"),
            "job {job:?}: {}",
            stderr(&out)
        );
        assert!(node.reservations().is_empty(), "job {job:?}");
        if let Some(r) = node.record("wrap") {
            assert_eq!(r["state"], "unreserved", "job {job:?}: nothing held: {r}");
        }
    }
}

/// `kill-all --cluster` is the one place vmpilot runs `squeue`. Missing, hanging, failing or
/// printing something other than the asked-for format, it must fail clearly (exit 3, naming
/// `squeue` and what went wrong) and cancel nothing — never report "no pilot jobs found".
/// Then: jobs listed and cancelled, but `squeue` breaking while kill-all waits for them to
/// leave, still gives the report, each job "not confirmed gone", and a non-zero exit. The
/// `squeue`/`scancel` here are FAKES; tests/slurm_cluster.rs runs the real ones.
#[test]
fn kill_all_cluster_with_a_broken_squeue_is_clear_and_cancels_nothing() {
    let node = Node::new("[lrm]\nkind = \"slurm\"\ncommand_timeout = \"1s\"\n");
    let bin = node.dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let cancelled = node.dir.path().join("scancel.log");
    fake(
        &bin,
        "scancel",
        &format!("echo \"$@\" >> {}", cancelled.display()),
    );
    let kill_all = || {
        node.cmd(&["kill-all", "--cluster", "--yes"])
            .env("PATH", &bin)
            .output()
            .unwrap()
    };
    let squeue = bin.join("squeue");
    let cases = [
        ("missing", None, "`squeue` was not found"),
        (
            "hanging",
            Some("exec /bin/sleep 30"),
            "did not finish within",
        ),
        (
            "failing",
            Some(
                "echo 'squeue: error: Unable to contact slurm controller (connect failure)' >&2; exit 1",
            ),
            "Unable to contact slurm controller",
        ),
        (
            "babbling",
            Some(
                r#"echo '{"jobs": [{"job_id": 12, "name": "vmpilot", "comment": "vmpilot-pilot", "job_state": "RUNNING"}'; echo '<html><body>502 Bad Gateway</body></html>'"#,
            ),
            "did not print a job listing",
        ),
    ];
    for (what, body, needle) in cases {
        let _ = std::fs::remove_file(&squeue);
        if let Some(body) = body {
            fake(&bin, "squeue", body);
        }
        let out = kill_all();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(err.contains("nothing was cancelled"), "{what}: {err}");
        assert!(
            !common::stdout(&out).contains("no pilot jobs found"),
            "{what}: {}",
            common::stdout(&out)
        );
        assert!(!cancelled.exists(), "{what}: a job was cancelled");
    }

    // Listed and cancelled, then squeue fails while kill-all waits for the job to leave.
    let listed = node.dir.path().join("listed");
    fake(
        &bin,
        "squeue",
        &format!(
            "if [ -e {0} ]; then echo 'squeue: error: slurm_receive_msg: Socket timed out' >&2; exit 1; fi\n/usr/bin/touch {0}\necho '{{\"jobs\": [{{\"job_id\": 41, \"name\": \"vmpilot\", \"comment\": \"vmpilot-pilot\", \"job_state\": \"RUNNING\", \"nodes\": \"n1\"}}]}}'",
            listed.display()
        ),
    );
    let out = kill_all();
    let (text, err) = (common::stdout(&out), stderr(&out));
    assert_eq!(std::fs::read_to_string(&cancelled).unwrap().trim(), "41");
    assert!(
        text.contains("41")
            && text.contains("not confirmed gone")
            && text.contains("Socket timed out"),
        "{text}\n{err}"
    );
    assert_ne!(out.status.code(), Some(0), "{text}\n{err}");
}
