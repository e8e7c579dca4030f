//! The reference coordinator (`vmpilot-coordinator`, issue 5) over real HTTP on 127.0.0.1,
//! with real SQLite files and, where it matters, the real pilot binary.
//!
//! See: issue 5 (protocol v1 and the reference coordinator).

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::refcoord::{Coord, Http, OLD_SECRET, SECRET, TOKEN, now, write_private};
use serde_json::{Value, json};
use vmpilot::coordinator::signature::{SIGNATURE_HEADER, Secret, sign};

fn rfc3339_in(secs: i64) -> String {
    let t = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    t.replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// An event with a fresh id.
fn event(kind: &str, lease: &str, epoch: u64, seq: u64, extra: Value) -> Value {
    let mut e = json!({
        "protocol": 1, "event_id": uuid::Uuid::new_v4().to_string(), "type": kind,
        "lease_id": lease, "epoch": epoch, "seq": seq, "node": "node-a", "job_id": "4242",
        "time": rfc3339_in(0),
    });
    let fields = match kind {
        "reserved" => {
            json!({"memory_mib": 2048, "cpus": 2, "deadline": rfc3339_in(3600), "grace_secs": 60})
        }
        "heartbeat" => json!({"deadline": rfc3339_in(3600), "state": "reserved"}),
        "unreserving" => json!({"reason": "coordinator-release"}),
        "unreserved" => {
            json!({"reason": "coordinator-release", "guests": [{"name": "vm1", "fate": "shut-down"}]})
        }
        _ => json!({}),
    };
    for (k, v) in fields
        .as_object()
        .unwrap()
        .iter()
        .chain(extra.as_object().unwrap())
    {
        e[k] = v.clone();
    }
    e
}

// ---------------------------------------------------------------------------------------
// JSON Schemas

fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs/schemas")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap();
    // Formats (date-time) are asserted, not just annotations.
    jsonschema::options()
        .should_validate_formats(true)
        .build(&value)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_valid(name: &str, instance: &Value) {
    let v = schema(name);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{instance} does not match {name}: {errors:?}"
    );
}

#[test]
fn every_pilot_message_validates_against_its_schema() {
    use vmpilot::coordinator::event::{EventBody, EventEnvelope};
    use vmpilot::lease::record::GuestFate;
    use vmpilot::lease::{EndReason, LeaseState};
    let guests = vec![GuestFate {
        name: "vm1".into(),
        fate: "suspended".into(),
        detail: Some("/var/lib/save/vm1".into()),
    }];
    let deadline = time::OffsetDateTime::now_utc();
    let bodies = vec![
        EventBody::Reserved {
            memory_mib: 4096,
            cpus: 2,
            deadline,
            grace_secs: 60,
            hypervisor: Some(vmpilot::coordinator::event::Hypervisor {
                backend: vmpilot::config::HostBackend::Libvirt,
                uri: Some("qemu:///system".into()),
            }),
        },
        EventBody::Reserved {
            memory_mib: 4096,
            cpus: 2,
            deadline,
            grace_secs: 60,
            hypervisor: None,
        },
        EventBody::Heartbeat {
            deadline,
            state: LeaseState::Reserved,
        },
        EventBody::Unreserving {
            reason: EndReason::Preempted,
            signal: Some("SIGTERM".into()),
        },
        EventBody::Unreserved {
            reason: EndReason::Deadline,
            guests: guests.clone(),
        },
        EventBody::Failed {
            reason: Some(EndReason::HostError),
            error: "libvirt is gone".into(),
            guests: guests.clone(),
        },
        EventBody::Failed {
            reason: None,
            error: "x".into(),
            guests: vec![],
        },
        EventBody::Recovered {
            outcome: LeaseState::Unreserved,
            reason: Some(EndReason::PilotLost),
            guests,
        },
        EventBody::Killed {
            by: "root".into(),
            why: "maintenance".into(),
            outcome: LeaseState::Failed,
        },
        EventBody::OverBudget {
            detail: "guests use 300 MiB of 200 MiB".into(),
            action: "reported".into(),
        },
    ];
    let mut kinds = HashSet::new();
    for body in bodies {
        let kind = body.kind();
        kinds.insert(kind);
        let env = EventEnvelope {
            protocol: 1,
            event_id: uuid::Uuid::new_v4().to_string(),
            lease_id: "slot-7".parse().unwrap(),
            epoch: 3,
            seq: 1,
            node: "n042".into(),
            job_id: Some("81234".into()),
            time: deadline,
            body,
        };
        let value = serde_json::to_value(&env).unwrap();
        assert_valid(&format!("event-{kind}.json"), &value);
        assert_valid("event.json", &value);
        // The coordinator parses what the pilot sends.
        vmpilot_coordinator::message::parse_event(&serde_json::to_vec(&value).unwrap())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
    assert_eq!(kinds.len(), 8, "every event type is covered");

    // The schemas reject what the protocol forbids.
    let good = event("reserved", "l1", 1, 0, json!({}));
    assert_valid("event.json", &good);
    for (field, bad) in [
        ("protocol", json!(2)),
        ("epoch", json!(-1)),
        ("deadline", json!("tomorrow")),
        ("type", json!("exploded")),
        ("lease_id", json!("../etc")),
    ] {
        let mut e = good.clone();
        e[field] = bad;
        assert!(!schema("event.json").is_valid(&e), "{field} accepted");
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("memory_mib");
    assert!(!schema("event-reserved.json").is_valid(&missing));

    // Directives as the pilot reads them.
    use vmpilot_protocol::directive::Directive;
    let release = serde_json::to_value(Directive::Release {
        lease_id: "l".parse().unwrap(),
        epoch: 2,
    })
    .unwrap();
    assert_valid("directive-release.json", &release);
    let shorten = serde_json::to_value(Directive::Shorten {
        lease_id: "l".parse().unwrap(),
        epoch: 2,
        deadline,
    })
    .unwrap();
    assert_valid("directive-shorten.json", &shorten);
    let reply = json!({"status": "applied", "directives": [release, shorten]});
    assert_valid("event-reply.json", &reply);
    let read =
        vmpilot::coordinator::directive::for_lease(&reply.to_string(), &"l".parse().unwrap(), 2);
    assert_eq!(read.len(), 2, "the pilot understands both directives");
}

// ---------------------------------------------------------------------------------------
// Ingest: what is accepted and what is refused

#[test]
fn ingest_accepts_signed_events_and_refuses_everything_else_as_specified() {
    let coord = Coord::start("");
    let http = Http::new();
    let url = &coord.url;
    let e = event("reserved", "ing-1", 1, 0, json!({}));
    let body = serde_json::to_vec(&e).unwrap();
    let secret = Secret::new(SECRET);

    let (status, reply) = http.post_raw(url, &body, Some(sign(&secret, now(), &body)));
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply, json!({"status": "applied", "directives": []}));
    assert_valid("event-reply.json", &reply);

    // Re-delivery (a 200 lost on the way back): acknowledged, not applied twice.
    let (status, reply) = http.post_raw(url, &body, Some(sign(&secret, now() - 5, &body)));
    assert_eq!((status, reply["status"].clone()), (200, json!("duplicate")));

    // Secret rotation: the old secret is still accepted.
    let e2 = event("heartbeat", "ing-1", 1, 0, json!({}));
    let b2 = serde_json::to_vec(&e2).unwrap();
    let (status, _) = http.post_raw(url, &b2, Some(sign(&Secret::new(OLD_SECRET), now(), &b2)));
    assert_eq!(status, 200);

    let errors = std::cell::RefCell::new(Vec::new());
    let expect = |what: &str, got: (u16, Value), status: u16, text: &str| {
        assert_eq!(got.0, status, "{what}: {}", got.1);
        let msg = got.1["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(text), "{what}: {msg:?} lacks {text:?}");
        errors.borrow_mut().push(got.1);
    };
    let fresh = serde_json::to_vec(&event("reserved", "ing-2", 1, 0, json!({}))).unwrap();
    expect(
        "no signature",
        http.post_raw(url, &fresh, None),
        401,
        "missing Vmpilot-Signature",
    );
    expect(
        "garbage signature",
        http.post_raw(url, &fresh, Some("t=1,v1=zz".into())),
        401,
        "malformed",
    );
    expect(
        "wrong secret",
        http.post_raw(
            url,
            &fresh,
            Some(sign(
                &Secret::new("some-other-secret-0123456789"),
                now(),
                &fresh,
            )),
        ),
        401,
        "does not match",
    );
    let mut tampered = fresh.clone();
    let sig = sign(&secret, now(), &fresh);
    tampered[10] ^= 1;
    expect(
        "tampered body",
        http.post_raw(url, &tampered, Some(sig)),
        401,
        "does not match",
    );
    expect(
        "replayed (old timestamp)",
        http.post_raw(url, &fresh, Some(sign(&secret, now() - 301, &fresh))),
        401,
        "outside the accepted window",
    );
    expect(
        "from the future",
        http.post_raw(url, &fresh, Some(sign(&secret, now() + 400, &fresh))),
        401,
        "outside the accepted window",
    );
    let mut v2 = event("reserved", "ing-2", 1, 0, json!({}));
    v2["protocol"] = json!(2);
    let (status, reply) = http.post_event(url, &v2);
    assert_eq!(status, 400);
    assert_eq!(reply["supported"], json!([1]), "{reply}");
    errors.borrow_mut().push(reply);
    let not_json = b"{\"protocol\": 1, oops".to_vec();
    expect(
        "malformed JSON",
        http.post_raw(url, &not_json, Some(sign(&secret, now(), &not_json))),
        400,
        "not a JSON object",
    );
    let mut incomplete = event("reserved", "ing-2", 1, 0, json!({}));
    incomplete.as_object_mut().unwrap().remove("deadline");
    let (status, reply) = http.post_event(url, &incomplete);
    assert_eq!(status, 400);
    assert!(
        reply["error"].as_str().unwrap().contains("deadline"),
        "{reply}"
    );
    let mut unknown_type = event("reserved", "ing-2", 1, 0, json!({}));
    unknown_type["type"] = json!("exploded");
    assert_eq!(http.post_event(url, &unknown_type).0, 400);
    let mut bad_lease = event("reserved", "ing-2", 1, 0, json!({}));
    bad_lease["lease_id"] = json!("../../etc");
    assert_eq!(http.post_event(url, &bad_lease).0, 400);
    let big = event(
        "unreserved",
        "ing-2",
        1,
        1,
        json!({"guests": [{"name": "x".repeat(70 * 1024), "fate": "destroyed"}]}),
    );
    let big = serde_json::to_vec(&big).unwrap();
    expect(
        "oversized",
        http.post_raw(url, &big, Some(sign(&secret, now(), &big))),
        413,
        "larger than the limit of 65536 bytes",
    );
    for e in errors.borrow().iter() {
        assert_valid("error.json", e);
    }

    // Only the two good events are stored, once each.
    let (_, page) = http.get(&format!("{url}/v1/events?after=0&limit=100"));
    assert_valid("events-page.json", &page);
    let types: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["reserved", "heartbeat"]);
    assert_eq!(page["events"][0]["event"], e, "stored exactly as received");
    let (status, lease) = http.get(&format!("{url}/v1/leases/ing-1"));
    assert_eq!(status, 200);
    assert_valid("lease.json", &lease);
    assert_eq!(lease["state"], "reserved");
    assert_eq!(lease["memory_mib"], 2048);
    assert_eq!(http.get(&format!("{url}/v1/leases/ing-2")).0, 404);
}

#[test]
fn a_release_directive_reaches_the_current_epoch_only() {
    let coord = Coord::start("");
    let http = Http::new();
    let url = &coord.url;
    // Epoch 1 of lease `dir-1`, then the id is reused on the node: epoch 2.
    assert_eq!(
        http.post_event(url, &event("reserved", "dir-1", 1, 0, json!({})))
            .0,
        200
    );
    assert_eq!(
        http.post_event(url, &event("reserved", "dir-1", 2, 0, json!({})))
            .0,
        200
    );

    let release = format!("{url}/v1/leases/dir-1/release");
    let (status, reply) = http.operator(&release, None, json!({}));
    assert_eq!(status, 401, "{reply}");
    assert_eq!(
        http.operator(&release, Some("wrong-token-0123456789"), json!({}))
            .0,
        401
    );
    assert_eq!(
        http.operator(
            &format!("{url}/v1/leases/nobody/release"),
            Some(TOKEN),
            json!({})
        )
        .0,
        404
    );
    let (status, directive) = http.operator(&release, Some(TOKEN), json!({}));
    assert_eq!(status, 202, "{directive}");
    assert_valid("directive.json", &directive);
    assert_eq!(
        (directive["epoch"].clone(), directive["status"].clone()),
        (json!(2), json!("pending"))
    );
    let (_, again) = http.operator(&release, Some(TOKEN), json!({}));
    assert_eq!(
        again["id"], directive["id"],
        "a second release is the same directive"
    );

    // A heartbeat from the stale epoch gets nothing; the current epoch gets the release,
    // again and again, until the lease says it is ending.
    let (_, stale) = http.post_event(url, &event("heartbeat", "dir-1", 1, 0, json!({})));
    assert_eq!(stale["directives"], json!([]));
    for _ in 0..2 {
        let (status, reply) = http.post_event(url, &event("heartbeat", "dir-1", 2, 0, json!({})));
        assert_eq!(status, 200);
        assert_valid("event-reply.json", &reply);
        assert_eq!(
            reply["directives"],
            json!([{"type": "release", "lease_id": "dir-1", "epoch": 2}])
        );
    }

    // Shorten: never later than the current deadline; an earlier one is repeated too.
    let shorten = format!("{url}/v1/leases/dir-1/shorten");
    let (status, reply) =
        http.operator(&shorten, Some(TOKEN), json!({"deadline": rfc3339_in(7200)}));
    assert_eq!(status, 400, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("not earlier"));
    assert_eq!(
        http.operator(&shorten, Some(TOKEN), json!({"deadline": "soon"}))
            .0,
        422
    );
    let earlier = rfc3339_in(600);
    let (status, _) = http.operator(&shorten, Some(TOKEN), json!({"deadline": earlier}));
    assert_eq!(status, 202);
    let (_, reply) = http.post_event(url, &event("heartbeat", "dir-1", 2, 0, json!({})));
    assert_eq!(
        reply["directives"][1],
        json!({"type": "shorten", "lease_id": "dir-1", "epoch": 2, "deadline": earlier})
    );
    let (_, lease) = http.get(&format!("{url}/v1/leases/dir-1"));
    assert_eq!(lease["epoch"], 2);
    assert_eq!(lease["epochs"], json!([2, 1]));
    assert_eq!(lease["pending_directives"].as_array().unwrap().len(), 2);

    // The lease reports it is ending: the directives are done.
    let (_, reply) = http.post_event(url, &event("unreserving", "dir-1", 2, 1, json!({})));
    assert_eq!(reply["directives"], json!([]));
    let (_, reply) = http.post_event(url, &event("unreserved", "dir-1", 2, 2, json!({})));
    assert_eq!(reply["directives"], json!([]));
    let (status, reply) = http.operator(&release, Some(TOKEN), json!({}));
    assert_eq!(status, 409, "{reply}");
    let (_, lease) = http.get(&format!("{url}/v1/leases/dir-1"));
    assert_eq!(lease["state"], "unreserved");
    assert_eq!(lease["reason"], "coordinator-release");
    assert_eq!(
        lease["guests"],
        json!([{"name": "vm1", "fate": "shut-down"}])
    );
    let (_, old) = http.get(&format!("{url}/v1/leases/dir-1?epoch=1"));
    assert_eq!(
        old["state"], "reserved",
        "epoch 1 untouched by epoch 2's events"
    );
    // A late heartbeat from before `unreserving` does not revive the lease.
    http.post_event(url, &event("heartbeat", "dir-1", 2, 0, json!({})));
    assert_eq!(
        http.get(&format!("{url}/v1/leases/dir-1")).1["state"],
        "unreserved"
    );
    let (_, log) = http.get(&format!("{url}/v1/events?lease_id=dir-1&limit=1000"));
    let sources: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "directive")
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["coordinator", "coordinator"],
        "directives are in the log"
    );
}

/// Issue #13, item 4: epochs are per node, so the same slot id with the same epoch on two
/// nodes is two leases. They were one row keyed by `(lease_id, epoch)`: the second node's
/// events overwrote the first's, a `release` reached both nodes, and once one node had
/// ended its lease an operator got 409 for the other, still live one.
#[test]
fn the_same_lease_id_on_two_nodes_is_two_leases() {
    let coord = Coord::start("");
    let http = Http::new();
    let url = &coord.url;
    let on = |node: &str, kind: &str, seq: u64| {
        let (status, reply) =
            http.post_event(url, &event(kind, "slot-1", 1, seq, json!({"node": node})));
        assert_eq!(status, 200, "{node} {kind}: {reply}");
        reply
    };
    on("node-a", "reserved", 0);
    on("node-b", "reserved", 0);
    let (_, list) = http.get(&format!("{url}/v1/leases"));
    let mut nodes: Vec<&str> = list["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["lease_id"] == "slot-1")
        .map(|l| l["node"].as_str().unwrap())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["node-a", "node-b"], "two leases: {list}");

    // Without a node, a release for an id live on two nodes is ambiguous: 409 naming both.
    let (status, reply) = http.operator(
        &format!("{url}/v1/leases/slot-1/release"),
        Some(TOKEN),
        json!({}),
    );
    assert_eq!(status, 409, "{reply}");
    let text = reply["error"].as_str().unwrap();
    assert!(
        text.contains("node-a") && text.contains("node-b") && text.contains("/v1/nodes/"),
        "{text}"
    );
    let (status, _) = http.get(&format!("{url}/v1/leases/slot-1"));
    assert_eq!(status, 409, "reading an ambiguous id without a node");

    // node-b ends its lease; node-a's stays reserved and can still be released.
    on("node-b", "unreserving", 1);
    on("node-b", "unreserved", 2);
    let (status, a) = http.get(&format!("{url}/v1/nodes/node-a/leases/slot-1"));
    assert_eq!(
        (status, a["state"].as_str()),
        (200, Some("reserved")),
        "{a}"
    );
    let (status, b) = http.get(&format!("{url}/v1/nodes/node-b/leases/slot-1"));
    assert_eq!(
        (status, b["state"].as_str()),
        (200, Some("unreserved")),
        "{b}"
    );
    let (status, directive) = http.operator(
        &format!("{url}/v1/nodes/node-a/leases/slot-1/release"),
        Some(TOKEN),
        json!({}),
    );
    assert_eq!(status, 202, "the live lease on node-a: {directive}");
    assert_eq!(directive["node"], "node-a");
    assert_valid("directive.json", &directive);
    // Only node-a's pilot is told; node-b's (a late heartbeat) is not.
    let reply = on("node-a", "heartbeat", 1);
    assert_eq!(
        reply["directives"],
        json!([{"type": "release", "lease_id": "slot-1", "epoch": 1}])
    );
    let (_, reply) = http.post_event(
        url,
        &event("heartbeat", "slot-1", 1, 3, json!({"node": "node-b"})),
    );
    assert_eq!(
        reply["directives"],
        json!([]),
        "node-b got node-a's release"
    );
    // With one live lease left, the node-less path finds it unambiguously.
    let (status, again) = http.operator(
        &format!("{url}/v1/leases/slot-1/release"),
        Some(TOKEN),
        json!({}),
    );
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["id"], directive["id"]);
    let (status, _) = http.operator(
        &format!("{url}/v1/nodes/node-b/leases/slot-1/release"),
        Some(TOKEN),
        json!({}),
    );
    assert_eq!(status, 409, "node-b's lease has ended");
    let (status, _) = http.operator(
        &format!("{url}/v1/nodes/node-c/leases/slot-1/release"),
        Some(TOKEN),
        json!({}),
    );
    assert_eq!(status, 404, "no such lease on node-c");
}

/// Issue #13, item 3: every heartbeat was kept forever, so the database only grew. With
/// `heartbeat_retention`, heartbeats received before it are deleted (at start, then
/// hourly); newer heartbeats and every other event stay.
#[test]
fn heartbeats_older_than_the_retention_are_deleted() {
    let mut coord = Coord::start("heartbeat_retention = \"1h\"\n");
    let http = Http::new();
    let url = coord.url.clone();
    let mut ids = Vec::new();
    for (kind, seq) in [
        ("reserved", 0),
        ("heartbeat", 1),
        ("heartbeat", 2),
        ("heartbeat", 3),
    ] {
        let e = event(kind, "ret-1", 1, seq, json!({}));
        ids.push(e["event_id"].as_str().unwrap().to_string());
        assert_eq!(http.post_event(&url, &e).0, 200);
    }
    assert_eq!(coord.stop(), 0);
    // Two of the heartbeats (and the reserved event) are made two hours old.
    let db = rusqlite::Connection::open(coord.dir.join("coord.db")).unwrap();
    for id in [&ids[0], &ids[1], &ids[2]] {
        db.execute(
            "UPDATE events SET received_at = '2020-01-01T00:00:00Z' WHERE event_id = ?1",
            [id],
        )
        .unwrap();
    }
    drop(db);
    let coord = Coord::spawn(&coord.dir);
    let kept = |coord: &Coord| -> Vec<String> {
        let (_, page) = http.get(&format!("{}/v1/events?lease_id=ret-1", coord.url));
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["event_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let until = Instant::now() + Duration::from_secs(20);
    while kept(&coord).len() > 2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        kept(&coord),
        [ids[0].clone(), ids[3].clone()],
        "the old heartbeats went, the reserved event and the new heartbeat stayed\n{}",
        coord.log()
    );
    assert!(coord.log().contains("pruned heartbeats"), "{}", coord.log());
    let (_, lease) = http.get(&format!("{}/v1/leases/ret-1", coord.url));
    assert_eq!(lease["last_seq"], 3, "the lease row is untouched: {lease}");
}

#[test]
fn operator_endpoints_are_off_without_a_token() {
    let coord = Coord::start("");
    std::fs::write(
        coord.dir.join("no-token.toml"),
        "listen = \"127.0.0.1:0\"\ndatabase = \"other.db\"\nsecret_files = [\"secret\"]\n",
    )
    .unwrap();
    let out = common::refcoord::check_config(&coord.dir.join("no-token.toml"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("operator endpoints disabled"));
}

/// Issue #13, item 3: with `protect_reads = true` the status page and every `GET /v1/...`
/// need the admin token; `/healthz` and signed ingest stay as they were. Without it (the
/// default) reads stay open, as before.
#[test]
fn protect_reads_puts_the_read_endpoints_behind_the_token() {
    let http = Http::new();
    let reads = [
        "/",
        "/v1/leases",
        "/v1/nodes",
        "/v1/events",
        "/v1/pilots",
        "/v1/leases/x",
    ];
    let open = Coord::start("");
    for path in reads {
        let (status, _) = http.get(&format!("{}{path}", open.url));
        assert_ne!(status, 401, "{path} needs no token by default");
    }
    let coord = Coord::start("protect_reads = true\n");
    for path in reads {
        let url = format!("{}{path}", coord.url);
        let (status, body) = http.get(&url);
        assert_eq!(status, 401, "{path} without a token: {body}");
        let (status, body) = http
            .send(http.client.get(&url).bearer_auth("wrong-token-0123456789"))
            .unwrap();
        assert_eq!(status, 401, "{path} with a wrong token: {body}");
        let (status, body) = http.send(http.client.get(&url).bearer_auth(TOKEN)).unwrap();
        assert!(
            status == 200 || (path == "/v1/leases/x" && status == 404),
            "{path} with the token: {status} {body}"
        );
    }
    assert_eq!(http.get(&format!("{}/healthz", coord.url)).0, 200);
    let (status, body) = http.post_event(&coord.url, &event("heartbeat", "pr-1", 1, 0, json!({})));
    assert_eq!(status, 200, "signed ingest needs no token: {body}");

    // And it cannot be switched on with nobody able to read.
    std::fs::write(
        coord.dir.join("no-token.toml"),
        "database = \"other.db\"\nsecret_files = [\"secret\"]\nprotect_reads = true\n",
    )
    .unwrap();
    let out = common::refcoord::check_config(&coord.dir.join("no-token.toml"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("protect_reads") && err.contains("admin_token_file"),
        "{err}"
    );
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write_private(&dir.path().join("secret"), SECRET);
    let cases = [
        (
            "secret_files = [\"secret\"]\nlisten_address = \"x\"\n",
            "listen_address",
        ),
        (
            "secret_files = [\"secret\"]\nlisten = \"localhost:1\"\n",
            "`listen`",
        ),
        ("secret_files = [\"nope\"]\n", "nope"),
        (
            "secret_files = [\"secret\"]\n[pool]\nbatch_system = \"slurm\"\nsubmit_script = \"/x\"\ntarget = \"many\"\n",
            "target",
        ),
    ];
    for (text, needle) in cases {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(common::coordinator_bin())
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(stderr.starts_with("vmpilot-coordinator: "), "{stderr}");
        assert!(stderr.contains(needle), "{text}: {stderr}");
    }
}

#[test]
fn a_silent_reserved_lease_is_marked_lost_and_found_again() {
    let coord = Coord::start("lost_after = \"1s\"\n");
    let http = Http::new();
    let url = &coord.url;
    http.post_event(url, &event("reserved", "quiet", 1, 0, json!({})));
    http.post_event(url, &event("reserved", "ended", 1, 0, json!({})));
    http.post_event(url, &event("unreserving", "ended", 1, 1, json!({})));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, lease) = http.get(&format!("{url}/v1/leases/quiet"));
        if lease["lost"] == true {
            assert!(lease["lost_at"].is_string());
            break;
        }
        assert!(Instant::now() < until, "never marked lost: {lease}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http.get(&format!("{url}/v1/leases/ended")).1["lost"], false);
    let (_, nodes) = http.get(&format!("{url}/v1/nodes"));
    assert_valid("node-list.json", &nodes);
    assert_eq!(nodes["nodes"][0]["troubled_leases"], 1);
    let (_, log) = http.get(&format!("{url}/v1/events?lease_id=quiet"));
    assert!(
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "lost")
    );
    // It speaks again: no longer lost.
    http.post_event(url, &event("heartbeat", "quiet", 1, 0, json!({})));
    assert_eq!(http.get(&format!("{url}/v1/leases/quiet")).1["lost"], false);
}

// ---------------------------------------------------------------------------------------
// Durability

/// Every event id acknowledged with 200 by a coordinator that is then SIGKILLed is in the
/// database after a restart.
#[test]
fn sigkill_mid_stream_loses_nothing_acknowledged() {
    let mut coord = Coord::start("");
    let url = coord.url.clone();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop_at = Instant::now() + Duration::from_secs(20);
    let mut senders = Vec::new();
    for t in 0..4 {
        let url = url.clone();
        let acked = acked.clone();
        senders.push(std::thread::spawn(move || {
            let http = Http::new();
            let secret = Secret::new(SECRET);
            let mut failures = 0;
            // Bounded: at most 5000 events per sender, 20 s, or 20 failures in a row.
            for i in 0..5000u64 {
                let e = event("heartbeat", &format!("kill-{t}"), 1, i, json!({}));
                let body = serde_json::to_vec(&e).unwrap();
                let req = http
                    .client
                    .post(format!("{url}/v1/events"))
                    .header(SIGNATURE_HEADER, sign(&secret, now(), &body))
                    .body(body);
                match http.send(req) {
                    Ok((200, _)) => {
                        failures = 0;
                        acked
                            .lock()
                            .unwrap()
                            .push(e["event_id"].as_str().unwrap().into());
                    }
                    _ => {
                        failures += 1;
                        if failures >= 20 {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                if Instant::now() > stop_at {
                    break;
                }
            }
        }));
    }
    // Let it get going, then pull the plug mid-stream.
    let until = Instant::now() + Duration::from_secs(10);
    while acked.lock().unwrap().len() < 300 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    coord.kill9();
    for s in senders {
        s.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} events acknowledged",
        acked.len()
    );

    let coord = Coord::spawn(&coord.dir);
    let http = Http::new();
    let mut stored = HashSet::new();
    let mut after = 0;
    loop {
        let (_, page) = http.get(&format!("{}/v1/events?after={after}&limit=1000", coord.url));
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        let mut last = after;
        for e in events {
            let cursor = e["cursor"].as_i64().unwrap();
            assert!(cursor > last, "cursors strictly increase");
            last = cursor;
            stored.insert(e["event"]["event_id"].as_str().unwrap().to_string());
        }
        after = page["next_cursor"].as_i64().unwrap();
        assert_eq!(after, last);
    }
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // At most the requests in flight at the kill were stored without their 200 arriving.
    assert!(
        stored.len() <= acked.len() + 4 * 2,
        "{} stored, {} acked",
        stored.len(),
        acked.len()
    );
    eprintln!(
        "acknowledged {} events before SIGKILL; all present after restart",
        acked.len()
    );
}

/// A self-signed certificate for 127.0.0.1 (rcgen), its PEM written beside the key.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_pem = certified.cert.pem();
    let cert = dir.join("coordinator.crt");
    let key = dir.join("coordinator.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    write_private(&key, &certified.signing_key.serialize_pem());
    (cert, key, cert_pem)
}

#[test]
fn with_tls_configured_the_api_is_https_only_and_the_key_must_be_private() {
    let keys = tempfile::tempdir().unwrap();
    let (cert, key, pem) = self_signed(keys.path());
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut coord = Coord::start(&tls);
    assert!(coord.url.starts_with("https://127.0.0.1:"), "{}", coord.url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let get = |client: &reqwest::Client, url: String| {
        rt.block_on(async { client.get(url).send().await?.text().await })
    };
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert_eq!(
        get(&trusting, format!("{}/healthz", coord.url)).unwrap(),
        "ok\n"
    );
    // A signed event over HTTPS is taken like over HTTP.
    let body = serde_json::to_vec(&event("heartbeat", "tls-1", 1, 0, json!({}))).unwrap();
    let status = rt.block_on(async {
        trusting
            .post(format!("{}/v1/events", coord.url))
            .header("content-type", "application/json")
            .header(SIGNATURE_HEADER, sign(&Secret::new(SECRET), now(), &body))
            .body(body.clone())
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(status.unwrap(), 200);
    // A client that does not trust the certificate is refused in the handshake ...
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let e = get(&untrusting, format!("{}/healthz", coord.url)).unwrap_err();
    assert!(e.is_connect() || e.is_request(), "{e:?}");
    // ... and plain HTTP on the same port gets no API answer.
    let plain = coord.url.replace("https://", "http://");
    let answer = get(&untrusting, format!("{plain}/healthz"));
    assert!(
        !matches!(answer.as_deref(), Ok("ok\n")),
        "plain HTTP was answered: {answer:?}"
    );
    assert_eq!(coord.stop(), 0, "{}", coord.log());

    // A key readable by every user is refused before anything listens, naming the key.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(common::coordinator_bin())
        .arg("--config")
        .arg(coord.dir.join("coordinator.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.key_file") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn sigterm_drains_and_closes_the_database_cleanly() {
    let mut coord = Coord::start("");
    let http = Http::new();
    for i in 0..20 {
        assert_eq!(
            http.post_event(&coord.url, &event("heartbeat", "term", 1, i, json!({})))
                .0,
            200
        );
    }
    assert_eq!(coord.stop(), 0, "{}", coord.log());
    assert!(
        coord.log().contains("coordinator stopped"),
        "{}",
        coord.log()
    );
    // Closed cleanly: the WAL was folded into the database file.
    let wal = coord.dir.join("coord.db-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
    let conn = rusqlite::Connection::open(coord.dir.join("coord.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE lease_id = 'term'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 20);
    let c2 = Coord::spawn(&coord.dir);
    let (_, lease) = http.get(&format!("{}/v1/leases/term", c2.url));
    assert_eq!(lease["last_seq"], 19);
}

// ---------------------------------------------------------------------------------------
// Pilots

/// A fake `sbatch` for the project's real slurm-scripts/vmpilot-submit: records its
/// arguments and prints `--parsable` output.
fn fake_slurm(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let sbatch = dir.join("sbatch");
    std::fs::write(
        &sbatch,
        format!(
            "#!/bin/sh\nn=$(cat {d}/n 2>/dev/null || echo 100)\nn=$((n+1))\necho $n > {d}/n\necho \"$@\" >> {d}/sbatch.args\necho \"$n;cluster\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let squeue = dir.join("squeue");
    std::fs::write(&squeue, "#!/bin/sh\necho 7\n").unwrap();
    for p in [&sbatch, &squeue] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (sbatch, squeue)
}

#[test]
fn pilots_are_submitted_with_the_project_script_and_the_pool_keeps_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let (sbatch, squeue) = fake_slurm(tmp.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("slurm-scripts/vmpilot-submit");
    // SAFETY of env: the coordinator inherits VMPILOT_SBATCH from this process; set it on
    // the child only, through a wrapper script.
    let wrapper = tmp.path().join("submit");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nVMPILOT_SBATCH={} exec {} \"$@\"\n",
            sbatch.display(),
            script.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let coord = Coord::start(&format!(
        "[pool]\nbatch_system = \"slurm\"\nsubmit_script = \"{}\"\ntarget = 3\ninterval = \"1h\"\ncount_command = [\"{}\"]\nmemory = \"1G\"\ncoordinator_url = \"http://127.0.0.1:9\"\n",
        wrapper.display(),
        squeue.display()
    ));
    let http = Http::new();
    let url = &coord.url;
    // The pool's first round: one pilot counted, two submitted.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, pilots) = http.get(&format!("{url}/v1/pilots"));
        if pilots["pilots"].as_array().unwrap().len() == 2 {
            assert_valid("pilot-list.json", &pilots);
            assert!(
                pilots["pilots"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|p| p["origin"] == "pool")
            );
            break;
        }
        assert!(
            Instant::now() < until,
            "pool did not submit: {pilots}\n{}",
            coord.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pilots_url = format!("{url}/v1/pilots");
    assert_eq!(http.operator(&pilots_url, None, json!({"count": 1})).0, 401);
    let (status, reply) = http.operator(
        &pilots_url,
        Some(TOKEN),
        json!({"count": 2, "memory": "2G", "cpus": 2, "time": "00:30:00", "partition": "vm"}),
    );
    assert_eq!(status, 201, "{reply}");
    assert_valid("pilots-response.json", &reply);
    assert_eq!(reply["job_ids"], json!(["103", "104"]));
    let args = std::fs::read_to_string(tmp.path().join("sbatch.args")).unwrap();
    let last = args.lines().last().unwrap();
    for want in [
        "--mem=2G",
        "--cpus-per-task=2",
        "--time=00:30:00",
        "--partition=vm",
        "--job-name=vmpilot",
    ] {
        assert!(last.contains(want), "{want} missing from sbatch {last}");
    }
    let (status, reply) = http.operator(&pilots_url, Some(TOKEN), json!({"memory": "--evil"}));
    assert_eq!(status, 400, "{reply}");
    let (status, _) = http.operator(
        &pilots_url,
        Some(TOKEN),
        json!({"count": 1, "colour": "red"}),
    );
    assert_eq!(status, 422);
    // A pilot that claims its lease links the job to it.
    let e = event("reserved", "pool-lease", 1, 0, json!({"job_id": "103"}));
    http.post_event(url, &e);
    let (_, pilots) = http.get(&pilots_url);
    let p = pilots["pilots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["job_id"] == "103")
        .unwrap()
        .clone();
    assert_eq!(p["lease_id"], "pool-lease");
}

// ---------------------------------------------------------------------------------------
// End to end with the real pilot

fn pilot_node(url: &str, extra: &str) -> common::Node {
    let node = common::Node::new("");
    let secret = node.secret_file(SECRET);
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        format!(
            "{text}\n[coordinator]\nurl = \"{url}\"\nsecret_file = \"{}\"\ntimeout = \"2s\"\n{extra}",
            secret.display()
        ),
    )
    .unwrap();
    node
}

fn pilot_types(http: &Http, url: &str, lease: &str) -> Vec<String> {
    let (_, log) = http.get(&format!("{url}/v1/events?lease_id={lease}&limit=1000"));
    log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "pilot" && e["type"] != "heartbeat")
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_real_pilot_reports_its_whole_lease_to_the_coordinator() {
    let coord = Coord::start("");
    let http = Http::new();
    let node = pilot_node(&coord.url, "");
    let out = node.run(&[
        "run",
        "--host",
        "simulated",
        "--memory",
        "1G",
        "--cpus",
        "2",
        "--walltime",
        "4s",
        "--grace",
        "1s",
        "--lease-id",
        "e2e-1",
        "--coordinator",
        &coord.url,
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(node.spooled(), 0, "every event was acknowledged");
    assert_eq!(
        pilot_types(&http, &coord.url, "e2e-1"),
        ["reserved", "unreserving", "unreserved"]
    );
    let (status, lease) = http.get(&format!("{}/v1/leases/e2e-1", coord.url));
    assert_eq!(status, 200);
    assert_valid("lease.json", &lease);
    assert_eq!(lease["state"], "unreserved");
    assert_eq!(lease["reason"], "deadline");
    assert_eq!(lease["node"], "testnode");
    assert_eq!(lease["memory_mib"], 1024);
    assert_eq!(lease["lost"], false);
    let (_, leases) = http.get(&format!("{}/v1/leases", coord.url));
    assert_valid("lease-list.json", &leases);
    let (_, nodes) = http.get(&format!("{}/v1/nodes", coord.url));
    assert_eq!(nodes["nodes"][0]["name"], "testnode");
}

/// The pilot and the coordinator over HTTPS: `[tls]` on the coordinator, the pilot trusting
/// its self-signed certificate through `ca_file`. Every event arrives, over TLS only.
#[test]
fn the_real_pilot_reports_over_https_to_a_coordinator_with_tls() {
    let keys = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(keys.path());
    let coord = Coord::start(&format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    assert!(coord.url.starts_with("https://"), "{}", coord.url);
    let node = pilot_node(&coord.url, &format!("ca_file = \"{}\"\n", cert.display()));
    let out = node.run(&[
        "run",
        "--host",
        "simulated",
        "--memory",
        "1G",
        "--walltime",
        "3s",
        "--grace",
        "1s",
        "--lease-id",
        "tls-e2e",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(node.spooled(), 0, "every event was acknowledged over HTTPS");
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lease: Value = rt.block_on(async {
        http.get(format!("{}/v1/leases/tls-e2e", coord.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(lease["state"], "unreserved", "{lease}");
    assert_eq!(lease["reason"], "deadline");
}

/// A `release` created through the API reaches the real pilot in a heartbeat reply and
/// ends its lease early with reason `coordinator-release`.
#[test]
fn a_release_through_the_api_ends_a_real_pilots_lease_early() {
    let coord = Coord::start("");
    let http = Http::new();
    let node = pilot_node(&coord.url, "heartbeat_interval = \"1s\"\n");
    let pilot = node.spawn_pilot(&[
        "--host",
        "simulated",
        "--memory",
        "1G",
        "--walltime",
        "120s",
        "--grace",
        "2s",
        "--lease-id",
        "e2e-rel",
        "--coordinator",
        &coord.url,
    ]);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, lease) = http.get(&format!("{}/v1/leases/e2e-rel", coord.url));
        if status == 200 && lease["state"] == "reserved" {
            break;
        }
        assert!(Instant::now() < until, "pilot never reserved: {lease}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let (status, reply) = http.operator(
        &format!("{}/v1/leases/e2e-rel/release", coord.url),
        Some(TOKEN),
        json!({}),
    );
    assert_eq!(status, 202, "{reply}");
    let (code, stderr) = pilot.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "released early"
    );
    let (_, lease) = http.get(&format!("{}/v1/leases/e2e-rel", coord.url));
    assert_eq!(lease["state"], "unreserved", "{lease}");
    assert_eq!(lease["reason"], "coordinator-release");
    assert_eq!(lease["pending_directives"], json!([]));
    assert_eq!(
        pilot_types(&http, &coord.url, "e2e-rel"),
        ["reserved", "unreserving", "unreserved"]
    );
    let _ = coord.pid();
}

// ---------------------------------------------------------------------------------------
// The status page in a real browser

/// Headless Chromium (Debian package `chromium`), or why the test cannot run. Under CI a
/// missing browser is a failure, not a skip.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed; scripts/test installs it (`apt-get install -y chromium`)"
        );
        eprintln!("skipped: chromium is not installed (apt-get install -y chromium)");
    }
    found
}

fn headless(browser: &Path, args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null());
    // Bounded: a wedged browser must not hang the suite.
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn the_status_page_shows_leases_and_highlights_failures_in_a_real_browser() {
    let Some(browser) = chromium() else { return };
    let coord = Coord::start("lost_after = \"2s\"\n");
    let http = Http::new();
    let url = &coord.url;
    http.post_event(url, &event("reserved", "web-lost", 1, 0, json!({})));
    let until = Instant::now() + Duration::from_secs(15);
    while http.get(&format!("{url}/v1/leases/web-lost")).1["lost"] != true {
        assert!(Instant::now() < until, "web-lost never lost");
        std::thread::sleep(Duration::from_millis(100));
    }
    http.post_event(
        url,
        &event("reserved", "web-ok", 1, 0, json!({"node": "node-b"})),
    );
    http.post_event(
        url,
        &event("reserved", "web-bad", 3, 0, json!({"node": "node-c"})),
    );
    http.post_event(
        url,
        &event(
            "failed",
            "web-bad",
            3,
            1,
            json!({"node": "node-c", "reason": "host-error", "error": "virsh destroy timed out <script>", "guests": [{"name": "vm9", "fate": "failed"}]}),
        ),
    );

    let out = headless(&browser, &["--dump-dom", url]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "web-ok",
        "web-bad",
        "web-lost",
        "node-b",
        "node-c",
        "Failures",
        "reserved (lost)",
        "host-error",
        "Recent events",
    ] {
        assert!(dom.contains(want), "{want} not on the page:\n{dom}");
    }
    assert!(dom.contains("&lt;script&gt;"), "network text is escaped");
    assert!(
        dom.matches("class=\"bad\"").count() >= 2,
        "failures are highlighted"
    );

    let shots = tempfile::tempdir().unwrap();
    let png = shots.path().join("status.png");
    let out = headless(
        &browser,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
            url,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    // A blank 1280x900 page compresses to a few KB; tables of text do not.
    assert!(
        bytes.len() > 20_000,
        "screenshot looks empty ({} bytes)",
        bytes.len()
    );
    if let Some(dir) = std::env::var_os("VMPILOT_SCREENSHOT_DIR") {
        std::fs::copy(&png, Path::new(&dir).join("coordinator-status.png")).unwrap();
    }
}

#[test]
fn the_openapi_file_covers_every_route_and_its_schemas_exist() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let api = std::fs::read_to_string(docs.join("openapi.yaml")).unwrap();
    // Every route the router declares, read from its source so a new one cannot be missed.
    let router = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/vmpilot-coordinator/src/api.rs"),
    )
    .unwrap();
    let routes: Vec<&str> = router
        .split(".route(")
        .skip(1)
        .map(|r| {
            let r = r.trim_start().strip_prefix('"').unwrap();
            &r[..r.find('"').unwrap()]
        })
        .collect();
    assert!(routes.len() >= 12, "routes not found in api.rs: {routes:?}");
    for route in routes {
        assert!(
            api.contains(&format!("\n  {route}:\n")),
            "{route} undocumented"
        );
    }
    for piece in api.split("schemas/").skip(1) {
        let name = &piece[..piece.find(".json").unwrap() + 5];
        assert!(docs.join("schemas").join(name).is_file(), "{name} missing");
        schema(name);
    }
}

/// A program that leaves a mark when run: the stand-in for "a program of the sender's
/// choosing ran on the coordinator".
fn marker_program(dir: &Path) -> (PathBuf, PathBuf) {
    let mark = dir.join("it-ran");
    let prog = dir.join("prog");
    std::fs::write(
        &prog,
        format!("#!/bin/sh\ntouch {}\nsleep 1\n", mark.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    (prog, mark)
}

fn hostile_reserved(node: &str, uri: &str) -> Value {
    let deadline = (time::OffsetDateTime::now_utc() + Duration::from_secs(3600))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    json!({
        "protocol": 1, "event_id": uuid::Uuid::new_v4().to_string(), "type": "reserved",
        "lease_id": "hostile", "epoch": 1, "seq": 0, "node": node, "job_id": null,
        "time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
        "memory_mib": 1024, "cpus": 1, "deadline": deadline, "grace_secs": 5,
        "hypervisor": {"backend": "libvirt", "uri": uri}
    })
}

const TINY_DOMAIN: &str = "<domain type='qemu'><name>tiny</name><memory unit='KiB'>131072</memory><os><type>hvm</type></os></domain>";

#[test]
fn the_coordinator_never_opens_a_uri_a_pilot_chose() {
    let work = tempfile::tempdir().unwrap();
    let (prog, mark) = marker_program(work.path());
    let template = work.path().join("tiny.xml");
    std::fs::write(&template, TINY_DOMAIN).unwrap();
    let http = Http::new();

    // The pilot-reported URI, with no allow-list: never opened.
    let coord = Coord::start(&format!(
        "[guests]\ntemplates = [\"{}\"]\n",
        template.display()
    ));
    let uri = format!("qemu+ext:///system?command={}", prog.display());
    let (status, body) = http.post_event(&coord.url, &hostile_reserved("n1", &uri));
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!mark.exists(), "the coordinator ran the pilot's program");
    assert!(
        coord.log().contains("allowed_uris"),
        "says why no guest started: {}",
        coord.log()
    );
    drop(coord);

    // A node name spliced into the configured pattern: the event is refused.
    let coord = Coord::start(&format!(
        "[guests]\ntemplates = [\"{}\"]\nuri = \"qemu+ssh://root@{{node}}/system\"\n",
        template.display()
    ));
    let node = format!("x/system?command={}&a=", prog.display());
    let (status, body) = http.post_event(&coord.url, &hostile_reserved(&node, "qemu:///system"));
    assert!(
        (400..500).contains(&status) && body.to_string().contains("host name"),
        "{status} {body}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(!mark.exists(), "the coordinator ran the pilot's program");

    // An allow-list may not hold a URI that runs programs either.
    let config = work.path().join("bad.toml");
    write_private(&work.path().join("secret"), SECRET);
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nsecret_files = [\"secret\"]\n[guests]\ntemplates = [\"{}\"]\nallowed_uris = [\"{uri}\"]\n",
            template.display()
        ),
    )
    .unwrap();
    let out = common::refcoord::check_config(&config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("guests.allowed_uris"), "{err}");
}

/// A coordinator directory with per-node keys only (a node master, no shared secret).
fn node_key_coordinator_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    write_private(
        &tmp.path().join("master"),
        "node-master-secret-0123456789abcdef",
    );
    std::fs::write(
        tmp.path().join("coordinator.toml"),
        "listen = \"127.0.0.1:0\"\ndatabase = \"coord.db\"\nnode_master_secret_files = [\"master\"]\n",
    )
    .unwrap();
    tmp
}

/// `node`'s secret, as `vmpilot-coordinator --node-secret` prints it for the config in `dir`.
fn node_key(dir: &Path, node: &str) -> String {
    let out = Command::new(common::coordinator_bin())
        .arg("--config")
        .arg(dir.join("coordinator.toml"))
        .args(["--node-secret", node])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn per_node_keys_sign_for_their_own_node_only() {
    let tmp = node_key_coordinator_dir();
    let dir = tmp.path();
    let (key_a, key_b) = (node_key(dir, "node-a"), node_key(dir, "node-b"));
    assert_ne!(key_a, key_b);
    let coord = Coord::spawn(dir);
    let http = Http::new();
    let post = |e: &Value, key: &str| {
        let body = serde_json::to_vec(e).unwrap();
        http.post_raw(
            &coord.url,
            &body,
            Some(sign(&Secret::new(key), now(), &body)),
        )
    };
    // node-a's key signs node-a's events...
    let (status, body) = post(&event("reserved", "pk", 1, 0, json!({})), &key_a);
    assert_eq!(status, 200, "{body}");
    // ...but not node-b's, nor the shared secret of other sites' tests.
    let mut as_b = event("heartbeat", "pk2", 1, 0, json!({}));
    as_b["node"] = "node-b".into();
    let (status, body) = post(&as_b, &key_a);
    assert_eq!(status, 401, "one node signed as another: {body}");
    let (status, _) = post(&as_b, &key_b);
    assert_eq!(status, 200);
    let (status, _) = post(&event("heartbeat", "pk3", 1, 0, json!({})), SECRET);
    assert_eq!(status, 401, "no shared secret is configured");
    // A header flooded with MAC values is refused as malformed, not checked value by value.
    let body = serde_json::to_vec(&event("heartbeat", "pk4", 1, 0, json!({}))).unwrap();
    let flood = format!("t={}{}", now(), ",v1=".repeat(100_000));
    let (status, reply) = http.post_raw(&coord.url, &body, Some(flood));
    assert!(
        status == 401 || status == 431 || status == 400,
        "{status} {reply}"
    );
    let (status, _) = http.get(&format!("{}/healthz", coord.url));
    assert_eq!(status, 200);
}

#[test]
fn a_pilot_with_its_node_key_reaches_the_coordinator() {
    let tmp = node_key_coordinator_dir();
    let dir = tmp.path();
    let key = node_key(dir, "testnode");
    let coord = Coord::spawn(dir);
    let node = common::Node::with_coordinator(&coord.url, &key, "");
    let out = node.run_short_lease("nk");
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert_eq!(
        node.spooled(),
        0,
        "every event acknowledged (replies verified with the node key)"
    );
    let (_, lease) = Http::new().get(&format!("{}/v1/leases/nk", coord.url));
    assert_eq!(lease["state"], "unreserved", "{lease}");
}
