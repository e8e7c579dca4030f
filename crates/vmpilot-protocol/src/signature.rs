//! `Vmpilot-Signature: t=<unix_time>,v1=<hex HMAC-SHA256 of "{t}.{body}">`.
//!
//! The timestamp is inside the MAC so a captured request cannot be replayed outside the
//! receiver's window; several secrets may be accepted at once so a site can rotate its
//! secret without a flag day. Comparison is constant-time (`Mac::verify_slice`).
//!
//! The coordinator signs its 2xx replies the same way, over the request's own signature
//! header, a newline and the reply body ([`sign_reply`]): a reply is only good for the
//! request it answers, so a forged or replayed "applied" can neither make the pilot drop
//! an undelivered event nor slip it a directive.

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Vmpilot-Signature";

type HmacSha256 = Hmac<Sha256>;

/// A shared secret. Its `Debug` never shows the bytes, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Unreadable.
    #[error(
        "cannot read coordinator secret {path}: {source}\n\nhint: check `coordinator.secret_file` and that this user may read it"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Readable by everyone.
    #[error(
        "coordinator secret {path} is readable by every user (mode {mode:o})\n\nhint: chmod 600 {path}"
    )]
    WorldReadable {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Empty or too short.
    #[error(
        "coordinator secret {path} is shorter than 16 bytes\n\nhint: generate one with `openssl rand -hex 32 > {path}`"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
    },
}

impl Secret {
    /// Wrap raw bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// Read the first line of `path`, refusing a world-readable or trivially short secret.
    pub fn from_file(path: &Path) -> Result<Secret, SecretError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        if mode & 0o004 != 0 {
            return Err(SecretError::WorldReadable {
                path: path.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let line = text.lines().next().unwrap_or("").trim();
        if line.len() < 16 {
            return Err(SecretError::TooShort {
                path: path.to_path_buf(),
            });
        }
        Ok(Secret(line.as_bytes().to_vec()))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length.
        HmacSha256::new_from_slice(&self.0).expect("hmac takes any key length")
    }
}

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// Header missing or not `t=...,v1=...`.
    #[error("malformed or missing {SIGNATURE_HEADER} header")]
    Malformed,
    /// Timestamp outside the accepted window.
    #[error("signature timestamp {t} is outside the accepted window of {window}s around {now}")]
    Stale {
        /// The signed time.
        t: i64,
        /// Our time.
        now: i64,
        /// The window, seconds.
        window: i64,
    },
    /// No configured secret produces this MAC.
    #[error("signature does not match")]
    Mismatch,
}

/// The header value for `body` signed at unix time `t`.
pub fn sign(secret: &Secret, t: i64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Check a header against any of `secrets`, within `window` seconds of `now`.
pub fn verify(
    secrets: &[Secret],
    header: &str,
    body: &[u8],
    now: i64,
    window: i64,
) -> Result<(), SignatureError> {
    verify_which(secrets, header, body, now, window).map(drop)
}

/// The message a reply's signature covers: the request's signature header, a newline, the
/// reply body.
fn reply_message(request_header: &str, reply_body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(request_header.len() + 1 + reply_body.len());
    message.extend_from_slice(request_header.as_bytes());
    message.push(b'\n');
    message.extend_from_slice(reply_body);
    message
}

/// The coordinator's signature header for `reply_body`, answering the request whose
/// signature header was `request_header`, signed at unix time `t`.
pub fn sign_reply(secret: &Secret, t: i64, request_header: &str, reply_body: &[u8]) -> String {
    sign(secret, t, &reply_message(request_header, reply_body))
}

/// Check a reply's signature header (see [`sign_reply`]).
pub fn verify_reply(
    secret: &Secret,
    header: &str,
    request_header: &str,
    reply_body: &[u8],
    now: i64,
    window: i64,
) -> Result<(), SignatureError> {
    let message = reply_message(request_header, reply_body);
    verify(std::slice::from_ref(secret), header, &message, now, window)
}

/// [`verify`], saying which secret matched (the coordinator signs its reply with it).
pub fn verify_which<'a>(
    secrets: &'a [Secret],
    header: &str,
    body: &[u8],
    now: i64,
    window: i64,
) -> Result<&'a Secret, SignatureError> {
    // Bounded before any work: an unauthenticated header costs at most MAX_MACS
    // comparisons per secret, and the body is hashed once per secret.
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut t = None;
    let mut macs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) if t.is_none() => {
                t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) if macs.len() < MAX_MACS && v.len() == MAC_HEX_LEN => {
                macs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            _ => return Err(SignatureError::Malformed),
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if macs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > window {
        return Err(SignatureError::Stale { t, now, window });
    }
    for secret in secrets {
        let mut mac = secret.mac();
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        // The body is hashed once; each candidate is checked against a copy of that state
        // (constant-time, `verify_slice`).
        if macs
            .iter()
            .any(|given| mac.clone().verify_slice(given).is_ok())
        {
            return Ok(secret);
        }
    }
    Err(SignatureError::Mismatch)
}

/// The longest signature header accepted: `t=` and two `v1=` values fit in 200 bytes.
pub const MAX_HEADER_LEN: usize = 512;

/// The most `v1=` values in one header: two cover a rotation.
pub const MAX_MACS: usize = 4;

/// A `v1=` value is a hex HMAC-SHA256: 64 characters.
const MAC_HEX_LEN: usize = 64;

/// The secret of node `node` under the site's node master secret: per-node keys, so that
/// one node's secret cannot sign as another node. `HMAC-SHA256(master, "vmpilot node key
/// v1\n" + node)`, hex: what goes into that node's `coordinator.secret_file`
/// (`vmpilot-coordinator --node-secret NODE` prints it). The coordinator derives the
/// same key from the `node` an event claims, so only that node's key verifies it.
pub fn node_secret(master: &Secret, node: &str) -> Secret {
    let mut mac = master.mac();
    mac.update(b"vmpilot node key v1\n");
    mac.update(node.as_bytes());
    Secret(hex::encode(mac.finalize().into_bytes()).into_bytes())
}

/// A node secret as text, to print for the node's secret file.
pub fn node_secret_text(master: &Secret, node: &str) -> String {
    String::from_utf8(node_secret(master, node).0).expect("hex is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_bounded_before_any_mac_is_computed() {
        let secret = Secret::new("bounded-secret-0123456789");
        let good = sign(&secret, 1000, b"body");
        assert!(verify(std::slice::from_ref(&secret), &good, b"body", 1000, 10).is_ok());
        let zeros = "0".repeat(64);
        let many = format!("t=1000{}", format!(",v1={zeros}").repeat(100_000));
        assert_eq!(
            verify(std::slice::from_ref(&secret), &many, b"body", 1000, 10),
            Err(SignatureError::Malformed)
        );
        let five = format!("t=1000{}", format!(",v1={zeros}").repeat(5));
        assert_eq!(
            verify(std::slice::from_ref(&secret), &five, b"body", 1000, 10),
            Err(SignatureError::Malformed)
        );
        for bad in ["t=1000,v1=", "t=1000,v1=abc", "t=1,t=2,v1=00", "t=x,v1=00"] {
            assert_eq!(
                verify(std::slice::from_ref(&secret), bad, b"body", 1000, 10),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // Rotation: the good MAC among others still verifies.
        let mac = good.split_once(",v1=").unwrap().1;
        let rotated = format!("t=1000,v1={zeros},v1={mac}");
        assert!(verify(std::slice::from_ref(&secret), &rotated, b"body", 1000, 10).is_ok());
    }

    #[test]
    fn node_secrets_differ_per_node_and_master() {
        let m = Secret::new("master-secret-0123456789");
        let a = node_secret(&m, "n1");
        assert_eq!(a, node_secret(&m, "n1"));
        assert_ne!(a, node_secret(&m, "n2"));
        assert_ne!(
            a,
            node_secret(&Secret::new("other-master-0123456789"), "n1")
        );
        assert_eq!(node_secret_text(&m, "n1").len(), 64);
        let h = sign(&a, 5, b"x");
        assert!(verify(&[node_secret(&m, "n2")], &h, b"x", 5, 1).is_err());
    }

    #[test]
    fn known_answer() {
        // HMAC-SHA256(key="secret-secret-secret", "1700000000.{}"), computed independently
        // with `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret-secret-secret`.
        let h = sign(&Secret::new("secret-secret-secret"), 1_700_000_000, b"{}");
        assert_eq!(
            h,
            "t=1700000000,v1=9abb7ec2de5533bf35e03b3947b220889dd81b1238d43182a426463aafcc6e8c"
        );
    }

    #[test]
    fn verify_accepts_rotation_and_rejects_tampering_and_replay() {
        let old = Secret::new("old-secret-0123456789");
        let new = Secret::new("new-secret-0123456789");
        let h = sign(&old, 1000, b"body");
        assert_eq!(
            verify(&[new.clone(), old.clone()], &h, b"body", 1010, 300),
            Ok(())
        );
        assert_eq!(
            verify(std::slice::from_ref(&new), &h, b"body", 1010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(std::slice::from_ref(&old), &h, b"b0dy", 1010, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(std::slice::from_ref(&old), &h, b"body", 2000, 300),
            Err(SignatureError::Stale { .. })
        ));
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=zz", "nonsense"] {
            assert_eq!(
                verify(std::slice::from_ref(&old), bad, b"body", 1, 300),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_reply_verifies_only_for_the_request_it_answers() {
        let s = Secret::new("reply-secret-0123456789");
        let request = sign(&s, 1000, b"event-1");
        let other = sign(&s, 1000, b"event-2");
        let reply = sign_reply(&s, 1001, &request, b"{\"status\":\"applied\"}");
        let ok = |h: &str, req: &str, body: &[u8]| verify_reply(&s, h, req, body, 1002, 300);
        assert_eq!(ok(&reply, &request, b"{\"status\":\"applied\"}"), Ok(()));
        // Replayed for another request, tampered with, or signed with another secret.
        assert_eq!(
            ok(&reply, &other, b"{\"status\":\"applied\"}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            ok(
                &reply,
                &request,
                b"{\"status\":\"applied\",\"directives\":[]}"
            ),
            Err(SignatureError::Mismatch)
        );
        let forged = sign_reply(
            &Secret::new("wrong-secret-0123456789"),
            1001,
            &request,
            b"{}",
        );
        assert_eq!(ok(&forged, &request, b"{}"), Err(SignatureError::Mismatch));
        assert_eq!(ok("", &request, b"{}"), Err(SignatureError::Malformed));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn secret_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Secret::from_file(&p),
            Err(SecretError::WorldReadable { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            Secret::from_file(&p).unwrap(),
            Secret::new("0123456789abcdef0123")
        );
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(
            Secret::from_file(&p),
            Err(SecretError::TooShort { .. })
        ));
    }
}
