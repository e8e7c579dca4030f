//! The `Vmpilot-Signature` header check, `coordinator::signature::verify`, on both ends of
//! the protocol (the coordinator runs it on every request). Input: the header, a newline,
//! then the body. A header that is not `t=…,v1=<hex>` is `Malformed`; nothing panics; a
//! forged header never verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmpilot::coordinator::signature::{Secret, sign, verify};

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let secret = Secret::new("fuzz-secret-0123456789abcdef");
    let result = verify(std::slice::from_ref(&secret), header, body, NOW, 300);
    if result.is_ok() {
        // Only the right MAC for this exact body may verify: the header must carry it.
        let t: i64 = header
            .split(',')
            .filter_map(|p| p.trim().strip_prefix("t=")?.parse().ok())
            .last()
            .expect("a verified header has a timestamp");
        let mac = sign(&secret, t, body);
        let mac = mac.split_once(",v1=").unwrap().1;
        assert!(
            header.to_ascii_lowercase().contains(mac),
            "forged header verified: {header}"
        );
    }
});
