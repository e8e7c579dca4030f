//! Lease ids and node names, as both sides of a lease spell them on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A lease id: the coordinator's slot id, also the record's file name, so it is restricted
/// to characters safe in paths, URLs and logs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String", into = "String")]
pub struct LeaseId(String);

/// A lease id that does not follow the rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "lease id `{0}` is not valid: use 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`"
)]
pub struct BadLeaseId(pub String);

impl LeaseId {
    /// A fresh random id for pilots started without `--lease-id`.
    pub fn generate() -> Self {
        LeaseId(uuid::Uuid::new_v4().simple().to_string()[..16].to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LeaseId {
    type Err = BadLeaseId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(LeaseId(s.to_string()))
        } else {
            Err(BadLeaseId(s.to_string()))
        }
    }
}

impl TryFrom<String> for LeaseId {
    type Error = BadLeaseId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<LeaseId> for String {
    fn from(id: LeaseId) -> String {
        id.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a node name is refused, if it is: a node name is a host name (letters, digits,
/// `-` and `_`, in dot-separated labels of 1 to 63 characters, at most 253 in all, no
/// label starting or ending with `-`). The coordinator puts node names into libvirt URIs
/// and file names and shows them on its page; anything else could change what they mean.
pub fn node_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some(format!(
            "is {} characters; a host name has 1 to 253",
            name.len()
        ));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            return Some(format!(
                "{:?} is not a host name (letters, digits, `-`, `_` and dots only)",
                name.chars().take(80).collect::<String>()
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_path_safe() {
        for ok in ["slot-1", "a", "A.b_c-9", &"x".repeat(64)] {
            assert!(ok.parse::<LeaseId>().is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(65), "é"] {
            assert!(bad.parse::<LeaseId>().is_err(), "{bad}");
        }
        assert_eq!(LeaseId::generate().as_str().len(), 16);
    }
}
