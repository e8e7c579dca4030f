//! The pilot's HTTP client goes only where the config tells it (issue #13, part 6): proxy
//! variables from the job's environment (`--export=ALL` brings the submitter's) are
//! ignored unless `coordinator.proxy` is set, and no redirect is followed. Real HTTP over
//! 127.0.0.1; the "proxy" and the redirect target are plain TCP listeners that count the
//! connections they get.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::coordinator::{Mode, TestCoordinator};
use common::{Node, stderr};

const SECRET: &str = "http-client-secret-0123456789";

/// A listener on 127.0.0.1 that counts connections and answers each with `reply`.
struct Listener {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Listener {
    fn start(reply: String) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Listener { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[test]
fn proxy_variables_from_the_job_environment_are_ignored() {
    let coordinator = TestCoordinator::start(SECRET, Mode::Accept);
    let proxy = Listener::start("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".into());
    let node = Node::with_coordinator(&coordinator.url, SECRET, "");
    let out = node
        .cmd(&[
            "run",
            "--memory",
            "512M",
            "--walltime",
            "3s",
            "--grace",
            "1s",
            "--lease-id",
            "px",
        ])
        .env("HTTP_PROXY", &proxy.url)
        .env("http_proxy", &proxy.url)
        .env("HTTPS_PROXY", &proxy.url)
        .env("ALL_PROXY", &proxy.url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.hits(), 0, "the pilot went through the job's proxy");
    coordinator.with_log(|l| {
        assert!(
            l.applied.iter().any(|e| e["type"] == "unreserved"),
            "events reached the coordinator directly: {:?}",
            l.applied
        );
    });
}

#[test]
fn a_redirect_from_the_coordinator_is_not_followed() {
    let elsewhere = Listener::start("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".into());
    let redirector = Listener::start(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {}/v1/events\r\ncontent-length: 0\r\n\r\n",
        elsewhere.url
    ));
    let node = Node::with_coordinator(&redirector.url, SECRET, "timeout = \"1s\"\n");
    let out = node.run_short_lease("rd");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(redirector.hits() > 0, "the coordinator was asked");
    assert_eq!(elsewhere.hits(), 0, "the pilot followed a redirect");
    // Not acknowledged: the events wait in the spool for the real coordinator.
    assert!(node.spooled() > 0, "events kept for later delivery");
}

#[test]
fn the_configured_proxy_is_the_one_used() {
    let proxy = Listener::start("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".into());
    let node = Node::with_coordinator(
        "http://127.0.0.1:9",
        SECRET,
        &format!("timeout = \"1s\"\nproxy = \"{}\"\n", proxy.url),
    );
    let out = node.run_short_lease("cp");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(proxy.hits() > 0, "coordinator.proxy was not used");
    let bad = Node::with_coordinator(&proxy.url, SECRET, "proxy = \"file:///etc/passwd\"\n");
    let out = bad.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("coordinator.proxy"),
        "{}",
        stderr(&out)
    );
}
