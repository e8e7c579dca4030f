//! Guest templates: on a lease's `reserved` event the coordinator defines and starts the
//! configured libvirt domains on that node, each carrying the lease's metadata, so the
//! pilot owns them (and stops them at lease end); when the lease is over it undefines the
//! ones that were stopped for good. This closes the loop the original workspace service had:
//! pilot claims the node, the cloud starts its guests there.
//!
//! A template is a domain XML file. For each lease it is rewritten with quick-xml: the
//! top-level `<name>` becomes `{template}-{lease}-{epoch}`, `<uuid>` is dropped (libvirt
//! makes a fresh one), and the vmpilot lease element goes into `<metadata>` (created if
//! absent). Everything else is passed through untouched.
//!
//! Launches run on blocking threads (the `virt` crate is synchronous) after the event has
//! been acknowledged, so a slow libvirt never delays a pilot's reply; the outcome of each is
//! stored (`guest_launches`) and shown by the API and the status page.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use serde::{Deserialize, Serialize};
use vmpilot_libvirt::virt::connect::Connect;
use vmpilot_libvirt::virt::domain::Domain;

use super::AppState;
use super::message::{IncomingBody, IncomingEvent};
use vmpilot_libvirt::{Conn, open_connection};
use vmpilot_protocol::guest_metadata::GuestOwner;
use vmpilot_protocol::guest_metadata::lease_metadata_xml;
use vmpilot_protocol::lease_id::LeaseId;

/// One configured template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The file's stem: the first part of every domain name made from it.
    pub name: String,
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// The domain XML as written.
    pub xml: String,
}

/// `[guests]`, validated.
#[derive(Debug, Clone)]
pub struct GuestsConfig {
    /// Started, in order, for every lease whose pilot reports a libvirt host.
    pub templates: Vec<Template>,
    /// The libvirt URI to reach a node, with `{node}` replaced by the node name
    /// (percent-encoded); `None`: the URI the pilot reported, if it is one of
    /// `allowed_uris`.
    pub uri: Option<String>,
    /// The exact URIs a pilot may report for the coordinator to open (e.g.
    /// `qemu:///system` when the coordinator runs on the node). A pilot's report is
    /// untrusted: libvirt's `ext` transport or a `command=` parameter would run a program
    /// of its choosing here. Empty: no reported URI is ever opened.
    pub allowed_uris: Vec<String>,
}

/// Why a libvirt URI is refused, if it is: one that runs a program (the `ext` transport)
/// or carries a query (`?command=`, `?socket=`, `?netcat=`… choose programs and paths) or
/// a fragment.
pub fn libvirt_uri_problem(uri: &str) -> Option<String> {
    let Ok(parsed) = url::Url::parse(uri) else {
        return Some(format!("`{}` is not a URI", uri.escape_debug()));
    };
    let transport = parsed.scheme().split_once('+').map(|(_, t)| t);
    if transport == Some("ext") {
        return Some(format!(
            "`{}` uses libvirt's `ext` transport, which runs a program",
            uri.escape_debug()
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Some(format!(
            "`{}` has a query or fragment; its parameters can name programs and sockets",
            uri.escape_debug()
        ));
    }
    None
}

/// Characters of a node name left as they are in a URI: RFC 3986's unreserved ones.
const URI_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl GuestsConfig {
    /// The URI to reach `node`, whose pilot reported `reported`, or why there is none.
    pub fn uri_for(&self, node: &str, reported: Option<&str>) -> Result<String, String> {
        let uri = match &self.uri {
            Some(pattern) => {
                if let Some(problem) = vmpilot_protocol::lease_id::node_name_problem(node) {
                    return Err(format!("node {problem}"));
                }
                let encoded = percent_encoding::utf8_percent_encode(node, URI_UNRESERVED);
                pattern.replace("{node}", &encoded.to_string())
            }
            None => {
                let Some(reported) = reported else {
                    return Err(
                        "the pilot reports no libvirt URI and [guests] uri is not set".into(),
                    );
                };
                if !self.allowed_uris.iter().any(|a| a == reported) {
                    return Err(format!(
                        "the pilot reports the URI `{}`, which is not in [guests] allowed_uris",
                        reported.escape_debug()
                    ));
                }
                reported.to_string()
            }
        };
        match libvirt_uri_problem(&uri) {
            Some(problem) => Err(problem),
            None => Ok(uri),
        }
    }
}

/// Why a template cannot be turned into a lease's domain XML.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// Not well-formed XML.
    #[error("not well-formed XML: {0}")]
    Xml(String),
    /// The root element is not `<domain>`.
    #[error("the root element is <{0}>, not <domain>")]
    NotDomain(String),
    /// No top-level `<name>`.
    #[error("has no <name> element under <domain>")]
    NoName,
    /// It already carries vmpilot lease metadata (it would name the wrong lease).
    #[error("already carries vmpilot lease metadata; remove it, the coordinator adds it per lease")]
    HasLeaseMetadata,
}

/// The domain name a template gets for a lease epoch.
pub fn domain_name(template: &str, lease: &LeaseId, epoch: u64) -> String {
    format!("{template}-{}-{epoch}", lease.as_str())
}

/// `template` rewritten for one lease: new `<name>`, no `<uuid>`, lease metadata added.
pub fn render(template: &str, name: &str, owner: &GuestOwner) -> Result<String, RenderError> {
    let xml_err = |e: &dyn std::fmt::Display| RenderError::Xml(e.to_string());
    let mut reader = Reader::from_str(template);
    let mut writer = Writer::new(Vec::new());
    let lease_xml = lease_metadata_xml(owner);
    let mut depth = 0usize;
    let mut seen_name = false;
    let mut seen_metadata = false;
    // Some(depth) while skipping the content of a top-level <name> or <uuid>.
    let mut skipping: Option<usize> = None;
    loop {
        let event = reader.read_event().map_err(|e| xml_err(&e))?;
        if let Some(at) = skipping {
            match &event {
                Event::Start(_) => depth += 1,
                Event::End(_) if depth == at => {
                    depth -= 1;
                    skipping = None;
                    continue;
                }
                Event::End(_) => depth -= 1,
                Event::Eof => return Err(RenderError::Xml("unexpected end of file".into())),
                _ => {}
            }
            continue;
        }
        match event {
            Event::Eof => break,
            Event::Start(ref start) => {
                depth += 1;
                let local = local_name(start);
                if depth == 1 && local != "domain" {
                    return Err(RenderError::NotDomain(local));
                }
                if depth == 3 && in_lease_namespace(start) {
                    return Err(RenderError::HasLeaseMetadata);
                }
                if depth == 2 {
                    match local.as_str() {
                        "uuid" => {
                            skipping = Some(depth);
                            continue;
                        }
                        "name" => {
                            seen_name = true;
                            write(&mut writer, Event::Start(start.to_owned()))?;
                            write(&mut writer, Event::Text(BytesText::new(name)))?;
                            write(&mut writer, Event::End(BytesEnd::new("name")))?;
                            skipping = Some(depth);
                            continue;
                        }
                        "metadata" => {
                            seen_metadata = true;
                            write(&mut writer, Event::Start(start.to_owned()))?;
                            raw(&mut writer, &lease_xml)?;
                            continue;
                        }
                        _ => {}
                    }
                }
                write(&mut writer, event)?;
            }
            Event::Empty(ref start) => {
                let local = local_name(start);
                if depth == 0 {
                    return Err(if local == "domain" {
                        RenderError::NoName
                    } else {
                        RenderError::NotDomain(local)
                    });
                }
                if depth == 2 && in_lease_namespace(start) {
                    return Err(RenderError::HasLeaseMetadata);
                }
                if depth == 1 {
                    match local.as_str() {
                        "uuid" => continue,
                        "name" => {
                            seen_name = true;
                            write(&mut writer, Event::Start(BytesStart::new("name")))?;
                            write(&mut writer, Event::Text(BytesText::new(name)))?;
                            write(&mut writer, Event::End(BytesEnd::new("name")))?;
                            continue;
                        }
                        "metadata" => {
                            seen_metadata = true;
                            write(&mut writer, Event::Start(BytesStart::new("metadata")))?;
                            raw(&mut writer, &lease_xml)?;
                            write(&mut writer, Event::End(BytesEnd::new("metadata")))?;
                            continue;
                        }
                        _ => {}
                    }
                }
                write(&mut writer, event)?;
            }
            Event::End(_) => {
                if depth == 1 && !seen_metadata {
                    seen_metadata = true;
                    write(&mut writer, Event::Start(BytesStart::new("metadata")))?;
                    raw(&mut writer, &lease_xml)?;
                    write(&mut writer, Event::End(BytesEnd::new("metadata")))?;
                }
                depth = depth.saturating_sub(1);
                write(&mut writer, event)?;
            }
            other => write(&mut writer, other)?,
        }
    }
    if depth != 0 {
        return Err(RenderError::Xml("unclosed elements".into()));
    }
    if !seen_name {
        return Err(RenderError::NoName);
    }
    String::from_utf8(writer.into_inner()).map_err(|e| xml_err(&e))
}

fn local_name(start: &BytesStart<'_>) -> String {
    start.local_name().into_inner().to_string()
}

/// Does this element declare or use the vmpilot lease namespace?
fn in_lease_namespace(start: &BytesStart<'_>) -> bool {
    use vmpilot_protocol::guest_metadata::LEASE_NS;
    start.attributes().flatten().any(|a| &*a.value == LEASE_NS)
}

fn write(writer: &mut Writer<Vec<u8>>, event: Event<'_>) -> Result<(), RenderError> {
    writer
        .write_event(event)
        .map_err(|e| RenderError::Xml(e.to_string()))
}

fn raw(writer: &mut Writer<Vec<u8>>, xml: &str) -> Result<(), RenderError> {
    writer
        .get_mut()
        .write_all(xml.as_bytes())
        .map_err(|e| RenderError::Xml(e.to_string()))
}

/// What happened to one template for one lease.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The template's name.
    pub template: String,
    /// The domain made from it.
    pub domain: String,
    /// `started`, `failed`, `not-started` (the lease ended before its turn), or after the
    /// lease `retired` (undefined; destroyed first if it still ran) / `kept` (still has a
    /// managed-save image, or could not be stopped).
    pub status: String,
    /// The error, or what was kept and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn connect(uri: &str) -> Result<Conn, String> {
    open_connection(uri).map_err(|e| format!("cannot connect to {uri}: {}", e.message()))
}

/// Define and start every template for a lease (blocking). A template that would take the
/// lease's guests past `memory_mib` is not started: the pilot would report it over budget.
/// `still_reserved` is asked right before each domain is started: a lease that ended
/// meanwhile gets no more guests (its pilot has already listed and stopped its guests).
pub fn launch(
    uri: &str,
    templates: &[Template],
    owner: &GuestOwner,
    memory_mib: u64,
    still_reserved: &dyn Fn() -> bool,
) -> Vec<Launch> {
    let names: Vec<String> = templates
        .iter()
        .map(|t| domain_name(&t.name, &owner.lease_id, owner.epoch))
        .collect();
    let failed_all = |detail: String| {
        templates
            .iter()
            .zip(&names)
            .map(|(t, n)| Launch {
                template: t.name.clone(),
                domain: n.clone(),
                status: "failed".into(),
                detail: Some(detail.clone()),
            })
            .collect()
    };
    let conn = match connect(uri) {
        Ok(c) => c,
        Err(e) => return failed_all(e),
    };
    let mut left_kib = memory_mib.saturating_mul(1024);
    let mut out = Vec::with_capacity(templates.len());
    for (template, name) in templates.iter().zip(names) {
        let outcome = launch_one(
            &conn.0,
            template,
            &name,
            owner,
            memory_mib,
            &mut left_kib,
            still_reserved,
        );
        let (status, detail) = match outcome {
            Ok(()) => ("started", None),
            Err(LaunchError::LeaseOver) => (
                "not-started",
                Some("the lease was no longer reserved when its turn came".to_string()),
            ),
            Err(LaunchError::Failed(e)) => ("failed", Some(e)),
        };
        match &detail {
            None => tracing::info!(domain = %name, lease = %owner.lease_id, "started guest"),
            Some(e) => {
                tracing::warn!(domain = %name, lease = %owner.lease_id, "guest not started: {e}")
            }
        }
        out.push(Launch {
            template: template.name.clone(),
            domain: name,
            status: status.into(),
            detail,
        });
    }
    out
}

/// Why one template was not started.
enum LaunchError {
    /// The lease is no longer `reserved`.
    LeaseOver,
    /// Anything else, said in full.
    Failed(String),
}

impl From<String> for LaunchError {
    fn from(e: String) -> Self {
        LaunchError::Failed(e)
    }
}

fn launch_one(
    conn: &Connect,
    template: &Template,
    name: &str,
    owner: &GuestOwner,
    memory_mib: u64,
    left_kib: &mut u64,
    still_reserved: &dyn Fn() -> bool,
) -> Result<(), LaunchError> {
    let xml = render(&template.xml, name, owner)
        .map_err(|e| format!("template {}: {e}", template.path.display()))?;
    let dom = Domain::define_xml(conn, &xml).map_err(|e| format!("define: {}", e.message()))?;
    let need_kib = dom
        .get_max_memory()
        .map_err(|e| format!("read its memory: {}", e.message()))?;
    if need_kib > *left_kib {
        let _ = dom.undefine();
        return Err(LaunchError::Failed(format!(
            "needs {} MiB but the lease has {} of its {memory_mib} MiB left",
            need_kib / 1024,
            *left_kib / 1024
        )));
    }
    if !still_reserved() {
        let _ = dom.undefine();
        return Err(LaunchError::LeaseOver);
    }
    if let Err(e) = dom.create() {
        let _ = dom.undefine();
        return Err(LaunchError::Failed(format!("start: {}", e.message())));
    }
    *left_kib -= need_kib;
    Ok(())
}

/// After the lease ended: undefine each launched domain that is stopped and has no
/// managed-save image (a suspended guest keeps its definition so it can be resumed).
pub fn retire(uri: &str, launched: &[Launch]) -> Vec<Launch> {
    let conn = match connect(uri) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("cannot retire guests: {e}");
            None
        }
    };
    launched
        .iter()
        .map(|l| {
            if l.status != "started" {
                return l.clone();
            }
            let (status, detail) = match &conn {
                None => (
                    "kept",
                    Some("libvirt unreachable when the lease ended".to_string()),
                ),
                Some(c) => retire_one(&c.0, &l.domain),
            };
            Launch {
                status: status.into(),
                detail,
                ..l.clone()
            }
        })
        .collect()
}

fn retire_one(conn: &Connect, name: &str) -> (&'static str, Option<String>) {
    let dom = match Domain::lookup_by_name(conn, name) {
        Ok(d) => d,
        Err(_) => return ("retired", Some("already undefined".into())),
    };
    match (dom.is_active(), dom.has_managed_save(0)) {
        (Ok(false), Ok(false)) => match dom.undefine() {
            Ok(()) => ("retired", None),
            Err(e) => ("kept", Some(format!("undefine: {}", e.message()))),
        },
        // The lease is over and its pilot did not stop it (it started after the pilot's last
        // look, or the pilot died): a guest of an ended lease must not run.
        (Ok(true), _) => match dom.destroy() {
            Ok(()) => match dom.has_managed_save(0) {
                Ok(false) => match dom.undefine() {
                    Ok(()) => (
                        "retired",
                        Some("was still running after the lease ended: destroyed".into()),
                    ),
                    Err(e) => (
                        "kept",
                        Some(format!("destroyed, but undefine: {}", e.message())),
                    ),
                },
                _ => (
                    "kept",
                    Some("was still running: destroyed; has a managed-save image".into()),
                ),
            },
            Err(e) => (
                "kept",
                Some(format!(
                    "still running after the lease ended, and destroy failed: {}",
                    e.message()
                )),
            ),
        },
        (_, Ok(true)) => ("kept", Some("has a managed-save image".into())),
        (Err(e), _) | (_, Err(e)) => ("kept", Some(e.message().to_string())),
    }
}

/// Start or retire a lease's guests after its event has been stored and acknowledged:
/// `reserved` with a libvirt host launches the templates; an event that ends the lease
/// (`unreserved`, `failed`, `recovered`, `killed`) retires them. Runs in the background;
/// outcomes go to the database.
pub fn after_event(state: &AppState, event: &IncomingEvent) {
    let Some(config) = state.config.guests.clone() else {
        return;
    };
    let db = state.db.clone();
    let lease = event.lease_id.clone();
    let epoch = event.epoch;
    let node = event.node.clone();
    match &event.body {
        IncomingBody::Reserved {
            memory_mib,
            hypervisor,
            ..
        } => {
            let hv = hypervisor.as_ref();
            if hv.map(|h| h.backend.as_str()) != Some("libvirt") {
                tracing::info!(%lease, epoch, %node, backend = ?hv.map(|h| &h.backend), "no guests started: the pilot does not report a libvirt host");
                return;
            }
            let uri = match config.uri_for(&node, hv.and_then(|h| h.uri.as_deref())) {
                Ok(uri) => uri,
                Err(why) => {
                    tracing::warn!(%lease, epoch, %node, "no guests started: {why}");
                    return;
                }
            };
            let memory_mib = *memory_mib;
            state.tasks.push(tokio::spawn(async move {
                // Never for a `reserved` that arrives after the lease's end (a late
                // delivery): the state in the database is what counts, not the event.
                if !is_reserved(&db, &node, &lease, epoch).await {
                    tracing::info!(%lease, epoch, %node, "no guests started: the lease is no longer reserved");
                    return;
                }
                let owner = GuestOwner {
                    lease_id: lease.clone(),
                    epoch,
                };
                let launched = {
                    let (uri, db, lease, node) =
                        (uri.clone(), db.clone(), lease.clone(), node.clone());
                    let runtime = tokio::runtime::Handle::current();
                    tokio::task::spawn_blocking(move || {
                        let still_reserved =
                            || runtime.block_on(is_reserved(&db, &node, &lease, epoch));
                        launch(&uri, &config.templates, &owner, memory_mib, &still_reserved)
                    })
                    .await
                    .unwrap_or_default()
                };
                if let Err(e) = db
                    .record_launches(
                        lease.to_string(),
                        epoch,
                        node.clone(),
                        uri.clone(),
                        launched.clone(),
                    )
                    .await
                {
                    tracing::error!(%lease, epoch, "cannot store guest launches: {e}");
                }
                // The lease may have ended between a guest's start and the record above,
                // when the end's retirement found nothing recorded yet: retire here too
                // (retiring twice is harmless).
                if launched.iter().any(|l| l.status == "started")
                    && !is_reserved(&db, &node, &lease, epoch).await
                {
                    retire_and_record(&db, lease, epoch, node, uri, launched).await;
                }
            }));
        }
        body if body.ends_lease() && !matches!(body, IncomingBody::Unreserving { .. }) => {
            state.tasks.push(tokio::spawn(async move {
                let found = match db.launches(node.clone(), lease.to_string(), epoch).await {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::error!(%lease, epoch, "cannot read guest launches: {e}");
                        return;
                    }
                };
                let Some((uri, launched)) = found else {
                    return;
                };
                if !launched.iter().any(|l| l.status == "started") {
                    return;
                }
                retire_and_record(&db, lease, epoch, node, uri, launched).await;
            }));
        }
        _ => {}
    }
}

/// Is the lease epoch `reserved` in the database right now? An unreadable state counts as
/// not reserved: a guest is started only for a lease known to be reserved.
async fn is_reserved(db: &super::db::Db, node: &str, lease: &LeaseId, epoch: u64) -> bool {
    match db
        .lease_state(node.to_string(), lease.to_string(), epoch)
        .await
    {
        Ok(state) => state.as_deref() == Some("reserved"),
        Err(e) => {
            tracing::error!(%lease, epoch, "cannot read the lease's state: {e}");
            false
        }
    }
}

/// Retire what was launched for an ended lease and store the outcome.
async fn retire_and_record(
    db: &super::db::Db,
    lease: LeaseId,
    epoch: u64,
    node: String,
    uri: String,
    launched: Vec<Launch>,
) {
    let retired = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || retire(&uri, &launched))
            .await
            .unwrap_or_default()
    };
    if let Err(e) = db
        .record_launches(lease.to_string(), epoch, node, uri, retired)
        .await
    {
        tracing::error!(%lease, epoch, "cannot store retired guests: {e}");
    }
}

/// Launches and retirements still running, awaited at shutdown so their outcome is stored.
#[derive(Default)]
pub struct Tasks(Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Tasks {
    /// Track `task`.
    pub fn push(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Wait for every tracked task, at most `limit` in total.
    pub async fn drain(&self, limit: std::time::Duration) {
        let tasks: Vec<_> = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("guest launches still running at shutdown; their outcome is not stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> GuestOwner {
        GuestOwner {
            lease_id: "slot-7".parse().unwrap(),
            epoch: 3,
        }
    }

    const TEMPLATE: &str = "<!-- a site template -->\n<domain type='qemu'>\n  <name>small</name>\n  <uuid>2b1c2e8e-6d2b-4f69-8a3e-0d1f7c7f1a11</uuid>\n  <memory unit='KiB'>131072</memory>\n  <devices><serial type='file'><source path='/tmp/a&amp;b.log'/></serial></devices>\n</domain>\n";

    #[test]
    fn a_template_gets_the_lease_name_and_metadata_and_loses_its_uuid() {
        let xml = render(TEMPLATE, "small-slot-7-3", &owner()).unwrap();
        assert!(xml.contains("<name>small-slot-7-3</name>"), "{xml}");
        assert!(!xml.contains("<uuid>"), "{xml}");
        assert!(
            xml.contains("<metadata><vmpilot:lease xmlns:vmpilot=\"https://vmpilot.dev/xmlns/lease/1\" id=\"slot-7\" epoch=\"3\"/></metadata></domain>"),
            "{xml}"
        );
        // Everything else passes through, entities included.
        assert!(xml.contains("<source path='/tmp/a&amp;b.log'/>"), "{xml}");
        assert!(xml.contains("<memory unit='KiB'>131072</memory>"), "{xml}");
        assert!(xml.starts_with("<!-- a site template -->"), "{xml}");
    }

    #[test]
    fn existing_metadata_is_kept_and_extended() {
        let t = "<domain><name>x</name><metadata><site:tag xmlns:site='urn:site'>a</site:tag></metadata></domain>";
        let xml = render(t, "x-l-1", &owner()).unwrap();
        assert!(
            xml.contains("<metadata><vmpilot:lease xmlns:vmpilot=\"https://vmpilot.dev/xmlns/lease/1\" id=\"slot-7\" epoch=\"3\"/><site:tag xmlns:site='urn:site'>a</site:tag></metadata>"),
            "{xml}"
        );
        let xml = render("<domain><name>x</name><metadata/></domain>", "y", &owner()).unwrap();
        assert_eq!(xml.matches("<metadata>").count(), 1, "{xml}");
        assert!(xml.contains("<name>y</name>"), "{xml}");
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        assert_eq!(
            render("<network><name>n</name></network>", "a", &owner()),
            Err(RenderError::NotDomain("network".into()))
        );
        assert_eq!(
            render("<domain><uuid>u</uuid></domain>", "a", &owner()),
            Err(RenderError::NoName)
        );
        assert!(matches!(
            render("<domain><name>x</name>", "a", &owner()),
            Err(RenderError::Xml(_))
        ));
        let leased = format!(
            "<domain><name>x</name><metadata>{}</metadata></domain>",
            lease_metadata_xml(&owner())
        );
        assert_eq!(
            render(&leased, "a", &owner()),
            Err(RenderError::HasLeaseMetadata)
        );
        // A nested <name> (e.g. inside <devices>) is not the domain's name.
        assert_eq!(
            render(
                "<domain><devices><name>x</name></devices></domain>",
                "a",
                &owner()
            ),
            Err(RenderError::NoName)
        );
    }

    #[test]
    fn the_uri_comes_from_the_pattern_or_an_allowed_report() {
        let mut c = GuestsConfig {
            templates: vec![],
            uri: None,
            allowed_uris: vec!["qemu:///system".into()],
        };
        assert_eq!(
            c.uri_for("n1", Some("qemu:///system")).as_deref(),
            Ok("qemu:///system")
        );
        assert!(c.uri_for("n1", None).is_err());
        // What a hostile pilot reports is never opened unless allowed, exactly.
        for hostile in [
            "qemu+ext:///system?command=/tmp/prog",
            "qemu:///system?socket=/tmp/s",
            "qemu:///session",
            "qemu:///system/",
        ] {
            let e = c.uri_for("n1", Some(hostile)).unwrap_err();
            assert!(e.contains("allowed_uris"), "{hostile}: {e}");
        }
        c.allowed_uris
            .push("qemu+ext:///system?command=/tmp/prog".into());
        assert!(
            c.uri_for("n1", Some("qemu+ext:///system?command=/tmp/prog"))
                .unwrap_err()
                .contains("ext")
        );
        c.uri = Some("qemu+ssh://root@{node}/system".into());
        assert_eq!(
            c.uri_for("n1", Some("qemu:///system")).as_deref(),
            Ok("qemu+ssh://root@n1/system")
        );
        // A node name that would splice a query into the pattern is refused.
        for node in ["x/system?command=PROG&a=", "x y", "-x", "a..b", ""] {
            assert!(c.uri_for(node, None).is_err(), "{node:?}");
        }
    }

    #[test]
    fn libvirt_uris_that_run_programs_are_refused() {
        assert!(libvirt_uri_problem("qemu:///system").is_none());
        assert!(libvirt_uri_problem("qemu+ssh://root@n1/system").is_none());
        assert!(libvirt_uri_problem("qemu+ext:///system").is_some());
        assert!(libvirt_uri_problem("qemu+ssh://n1/system?command=x").is_some());
        assert!(libvirt_uri_problem("qemu:///system#x").is_some());
        assert!(libvirt_uri_problem("not a uri").is_some());
    }
}
