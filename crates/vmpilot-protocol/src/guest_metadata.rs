//! The lease metadata a guest carries in its libvirt domain XML, and nothing else: the
//! coordinator writes it when it starts a guest, the pilot reads it to know whose guest it is.
//!
//! A guest belongs to a lease when its `<metadata>` holds
//! `<vmpilot:lease xmlns:vmpilot="https://vmpilot.dev/xmlns/lease/1" id="LEASE" epoch="N"/>`.
//! libvirt hands the element back (through `virDomainGetMetadata` with the namespace URI)
//! without its prefix, e.g. `<lease id="a1" epoch="3"/>`; this module reads either form with
//! a deliberately small parser (one element, its attributes, the five XML entities), so no
//! XML library is needed for one line.

use serde::{Deserialize, Serialize};

use crate::lease_id::LeaseId;

/// The lease a guest belongs to, from its metadata (or, on Xen, its domain name).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GuestOwner {
    /// Lease id.
    pub lease_id: LeaseId,
    /// Lease epoch the guest was started for.
    pub epoch: u64,
}

/// The namespace URI of vmpilot's lease metadata.
pub const LEASE_NS: &str = "https://vmpilot.dev/xmlns/lease/1";

/// The prefix vmpilot writes the element with (any prefix is accepted when reading).
pub const LEASE_PREFIX: &str = "vmpilot";

/// The `<metadata>` child that marks a guest as `owner`'s.
pub fn lease_metadata_xml(owner: &GuestOwner) -> String {
    format!(
        "<{LEASE_PREFIX}:lease xmlns:{LEASE_PREFIX}=\"{LEASE_NS}\" id=\"{}\" epoch=\"{}\"/>",
        escape(owner.lease_id.as_str()),
        owner.epoch
    )
}

/// Read the owner from the metadata element libvirt returns. Errors say what is wrong, for
/// a warning naming the domain.
pub fn parse_lease_metadata(xml: &str) -> Result<GuestOwner, String> {
    let (name, attrs) = first_element(xml)?;
    let local = name.rsplit(':').next().unwrap_or(&name);
    if local != "lease" {
        return Err(format!("expected a <lease> element, found <{name}>"));
    }
    let get = |key: &str| {
        attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("<lease> has no `{key}` attribute"))
    };
    let id = get("id")?;
    let lease_id: LeaseId = id.parse().map_err(|e| format!("{e}"))?;
    let epoch_text = get("epoch")?;
    let epoch = epoch_text
        .trim()
        .parse()
        .map_err(|_| format!("epoch `{epoch_text}` is not a number"))?;
    Ok(GuestOwner { lease_id, epoch })
}

/// The first element's name and attributes (unescaped).
fn first_element(xml: &str) -> Result<(String, Vec<(String, String)>), String> {
    let mut rest = xml.trim_start();
    // Skip an XML declaration or comments before the element.
    while rest.starts_with("<?") || rest.starts_with("<!--") {
        let end = if rest.starts_with("<?") { "?>" } else { "-->" };
        let at = rest
            .find(end)
            .ok_or("unterminated declaration or comment")?;
        rest = rest[at + end.len()..].trim_start();
    }
    let body = rest.strip_prefix('<').ok_or("no element found")?;
    let close = tag_end(body).ok_or("unterminated start tag")?;
    let tag = body[..close].trim_end_matches('/');
    let name_len = tag.find(|c: char| c.is_whitespace()).unwrap_or(tag.len());
    let name = tag[..name_len].to_string();
    if name.is_empty() {
        return Err("element without a name".into());
    }
    Ok((name, attributes(&tag[name_len..])?))
}

/// Index of the `>` that ends a start tag, skipping `>` inside quoted values.
fn tag_end(body: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

fn attributes(mut s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if s.is_empty() {
            return Ok(out);
        }
        let eq = s
            .find('=')
            .ok_or_else(|| format!("attribute without value near `{s}`"))?;
        let key = s[..eq].trim().to_string();
        let after = s[eq + 1..].trim_start();
        let quote = after
            .chars()
            .next()
            .filter(|c| matches!(c, '"' | '\''))
            .ok_or_else(|| format!("attribute `{key}` is not quoted"))?;
        let value_len = after[1..]
            .find(quote)
            .ok_or_else(|| format!("attribute `{key}` is not terminated"))?;
        out.push((key, unescape(&after[1..1 + value_len])));
        s = &after[value_len + 2..];
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str, epoch: u64) -> GuestOwner {
        GuestOwner {
            lease_id: id.parse().unwrap(),
            epoch,
        }
    }

    #[test]
    fn reads_what_libvirt_returns() {
        // virsh metadata DOMAIN https://vmpilot.dev/xmlns/lease/1, libvirt 9.0
        assert_eq!(
            parse_lease_metadata("<lease id=\"a1\" epoch=\"3\"/>\n").unwrap(),
            owner("a1", 3)
        );
        assert_eq!(
            parse_lease_metadata("<lease epoch='12' id='job-81.x_y'></lease>").unwrap(),
            owner("job-81.x_y", 12)
        );
    }

    #[test]
    fn renders_and_reads_back_the_documented_form() {
        let xml = lease_metadata_xml(&owner("l-1", 7));
        assert_eq!(
            xml,
            "<vmpilot:lease xmlns:vmpilot=\"https://vmpilot.dev/xmlns/lease/1\" id=\"l-1\" epoch=\"7\"/>"
        );
        assert_eq!(parse_lease_metadata(&xml).unwrap(), owner("l-1", 7));
        let with_decl = format!("<?xml version=\"1.0\"?><!-- c --> {xml}");
        assert_eq!(parse_lease_metadata(&with_decl).unwrap(), owner("l-1", 7));
    }

    #[test]
    fn malformed_metadata_is_explained() {
        let cases = [
            ("", "no element"),
            ("<other id=\"a\" epoch=\"1\"/>", "expected a <lease>"),
            ("<lease epoch=\"1\"/>", "`id`"),
            ("<lease id=\"a\"/>", "`epoch`"),
            ("<lease id=\"a\" epoch=\"x\"/>", "not a number"),
            ("<lease id=\"a b\" epoch=\"1\"/>", "not valid"),
            ("<lease id=a epoch=\"1\"/>", "not quoted"),
            ("<lease id=\"a", "unterminated"),
        ];
        for (xml, want) in cases {
            let e = parse_lease_metadata(xml).unwrap_err();
            assert!(e.contains(want), "{xml}: {e}");
        }
        // `>` inside a value and entities are handled.
        let e = parse_lease_metadata("<lease id=\"a&amp;&gt;\" epoch=\"1\"/>").unwrap_err();
        assert!(e.contains("a&>"), "{e}");
    }
}
