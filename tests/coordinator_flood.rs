//! Issue #13, item 3: the reference coordinator survives clients that never finish. A real
//! `vmpilot-coordinator` on 127.0.0.1, plain and with `[tls]`, attacked with raw TCP:
//! half-sent headers, silent connections, idle keep-alive connections, a body that never
//! comes, and more connections than `max_connections`. Before, every such connection stayed
//! open for as long as the client liked, until descriptors ran out.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::refcoord::{Coord, TOKEN};

const LIMITS: &str = "max_connections = 16\nheader_timeout = \"1s\"\nrequest_timeout = \"2s\"\n";

fn addr(coord: &Coord) -> SocketAddr {
    let hostport = coord.url.split("://").nth(1).unwrap();
    hostport.parse().unwrap()
}

/// What the server did with a connection within `wait`: closed it (`true`), or nothing
/// (`false`, still open). Bytes it sent first (e.g. a 408) are returned too.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> (bool, String) {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {
                return (true, String::from_utf8_lossy(&got).into_owned());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (false, String::from_utf8_lossy(&got).into_owned());
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The attack on one coordinator; `plain` says whether it speaks HTTP (else TLS, where the
/// half-sent thing is the handshake).
fn half_open_connections_are_bounded(coord: &Coord, plain: bool) {
    let at = addr(coord);
    // Fill every slot with a connection that never completes its request (or handshake).
    let mut held: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(at).unwrap();
            if plain {
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            } else {
                s.write_all(&[0x16, 0x03, 0x01]).unwrap();
            }
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // One more is turned away at once: it is closed without a byte being read from it.
    let mut extra = TcpStream::connect(at).unwrap();
    let (closed, _) = closed_within(&mut extra, Duration::from_millis(800));
    assert!(
        closed,
        "a connection past max_connections was kept open\n{}",
        coord.log()
    );
    // The held ones are closed once header_timeout (1 s) has passed, not kept forever.
    for (i, s) in held.iter_mut().enumerate() {
        let (closed, _) = closed_within(s, Duration::from_secs(10));
        assert!(
            closed,
            "half-sent connection {i} still open after 10 s\n{}",
            coord.log()
        );
    }
    assert!(
        coord.log().contains("connection limit reached"),
        "the refusal is logged once: {}",
        coord.log()
    );
}

fn http(at: SocketAddr, request: &str) -> TcpStream {
    let mut s = TcpStream::connect(at).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    s
}

#[test]
fn plain_http_bounds_connections_headers_idle_keep_alive_and_bodies() {
    let coord = Coord::start(LIMITS);
    half_open_connections_are_bounded(&coord, true);
    let at = addr(&coord);

    // Slots are free again: an honest request is answered ...
    let mut s = http(at, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}"
    );
    // ... and the keep-alive connection, left idle, is closed rather than held.
    let (closed, _) = closed_within(&mut s, Duration::from_secs(10));
    assert!(closed, "an idle keep-alive connection was kept open");

    // Headers in, body never sent: the request ends with 408 after request_timeout.
    let mut s = http(
        at,
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    );
    let (closed, answer) = closed_within(&mut s, Duration::from_secs(10));
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a body that never comes must end in 408, got {answer:?} (closed: {closed})"
    );
}

#[test]
fn tls_bounds_handshakes_and_connections_the_same_way() {
    let keys = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_file = keys.path().join("cert.pem");
    let key_file = keys.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    common::refcoord::write_private(&key_file, &cert.signing_key.serialize_pem());
    let coord = Coord::start(&format!(
        "{LIMITS}[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert_file.display(),
        key_file.display()
    ));
    assert!(coord.url.starts_with("https://"), "{}", coord.url);
    half_open_connections_are_bounded(&coord, false);
    // The slots are free again: a real TLS client gets its answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pem = cert.cert.pem();
    let status = rt.block_on(async {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        client
            .get(format!("{}/healthz", coord.url))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status.as_u16(), 200);
}

#[test]
fn limits_out_of_range_are_config_errors_naming_the_key() {
    for (extra, key) in [
        ("max_connections = 3\n", "max_connections"),
        ("header_timeout = \"0s\"\n", "header_timeout"),
        ("request_timeout = \"100ms\"\n", "request_timeout"),
        ("heartbeat_retention = \"10m\"\n", "heartbeat_retention"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        common::refcoord::write_private(&dir.path().join("secret"), "x".repeat(32).as_str());
        common::refcoord::write_private(&dir.path().join("admin-token"), TOKEN);
        std::fs::write(
            dir.path().join("c.toml"),
            format!("secret_files = [\"secret\"]\nadmin_token_file = \"admin-token\"\n{extra}"),
        )
        .unwrap();
        let out = common::refcoord::check_config(&dir.path().join("c.toml"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(key) && err.contains("hint:"), "{extra}: {err}");
    }
}
