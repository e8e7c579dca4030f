//! Prometheus metrics as a node_exporter *textfile collector* file.
//!
//! vmpilot runs no server of its own: on each lease transition the pilot (and `recover`,
//! `kill-all`) rewrite one file in node_exporter's `--collector.textfile.directory`
//! (config: `[metrics] textfile`), and node_exporter serves it with the node's other
//! metrics. Every metric name is documented in docs/metrics.md.
//!
//! The file is replaced atomically (temp file in the same directory, then `rename`), so a
//! scrape never sees half a file. It is mode 0644 — node_exporter usually runs as its own
//! user — which is safe because it holds no secret: lease ids, states, times, counts and the
//! node name. The temp file's name does not end in `.prom`, which node_exporter ignores.
//!
//! [`render`] is the pure part (records in, exposition text out) and [`write`] puts the
//! text in place; the split keeps the format testable without a file system.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use crate::coordinator::spool::Backlog;
use crate::lease::LeaseState;
use crate::lease::record::LeaseRecord;

/// How long a finished lease (unreserved or failed) stays in the file after its last
/// transition. Lease ids are unbounded over a node's life; dropping old finished leases
/// keeps the file and the number of series bounded, while an hour is ample for any scrape
/// interval (and for recording rules) to pick up the lease's durations.
pub const FINISHED_RETENTION: Duration = Duration::hours(1);

/// Writing the metrics file failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The file's directory (node_exporter's textfile directory) is not usable.
    #[error(
        "metrics file {path} has no usable directory: {source} (create node_exporter's textfile directory, or fix `[metrics] textfile`)"
    )]
    Directory {
        /// The metrics file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing the temp file or renaming it over the metrics file failed.
    #[error("cannot write metrics file {path}: {source}")]
    Write {
        /// The metrics file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Render the metrics and atomically replace `path` with them (mode 0644).
///
/// - `node`: this node's name (`node_name`), put in the `node` label of every series;
/// - `leases`: the lease records on the node (as `Store::list` returns them); finished
///   leases older than [`FINISHED_RETENTION`] are left out;
/// - `spool`: the coordinator spool's backlog, `None` when no coordinator is configured (the
///   spool metrics are then absent, not zero);
/// - `failures`: failure counts by kind (e.g. `host`, `coordinator`, `recover`), exported as
///   the counter `vmpilot_failures_total{kind}`. Counters must not go down between writes:
///   pass node-wide totals, not one process's.
///
/// The file is not fsynced: metrics are rewritten on the next transition and need no
/// durability, and the pilot's transitions should not wait on the disk for them. The rename
/// alone guarantees that readers see either the old file or the new one.
pub fn write(
    path: &Path,
    node: &str,
    leases: &[LeaseRecord],
    spool: Option<&Backlog>,
    failures: &BTreeMap<String, u64>,
) -> Result<(), MetricsError> {
    let text = render(node, leases, spool, failures, OffsetDateTime::now_utc());
    replace_file(path, text.as_bytes())
}

/// Rewrite the configured metrics file from what is on disk now. Best effort: a metrics
/// failure is logged and never stops or delays a lease. Called after every transition by the
/// pilot, `recover` and `kill-all`, so all of them write the same, node-wide figures.
pub fn publish(config: &crate::config::Config, store: &crate::lease::store::Store) {
    let Some(path) = &config.metrics_textfile else {
        return;
    };
    let leases: Vec<LeaseRecord> = store
        .list()
        .map(|all| all.into_iter().flatten().collect())
        .unwrap_or_default();
    let spool = config.coordinator.as_ref().and_then(|_| {
        crate::coordinator::spool::Spool::open(&config.state_dir)
            .ok()?
            .backlog()
            .ok()
    });
    if let Err(e) = write(
        path,
        &config.node_name,
        &leases,
        spool.as_ref(),
        &failure_counts(&leases),
    ) {
        tracing::warn!(error = %e, "cannot write the metrics file");
    }
}

/// Node-wide failure totals, derived from the lease records (which are kept), so every
/// writer agrees and the counters only grow while records are kept.
pub fn failure_counts(leases: &[LeaseRecord]) -> BTreeMap<String, u64> {
    use crate::lease::EndReason;
    let mut counts = BTreeMap::new();
    let mut bump = |kind: &str| *counts.entry(kind.to_string()).or_insert(0) += 1;
    for r in leases {
        if r.state == LeaseState::Failed {
            bump("not-restored");
        }
        match r.end_reason {
            Some(EndReason::HostError) => bump("host-error"),
            Some(EndReason::PilotLost) => bump("pilot-lost"),
            _ => {}
        }
    }
    counts
}

/// Atomically replace `path` with `bytes`, world-readable (see the module docs for why not
/// `SafeDir::write_atomic`, which makes files 0600 and fsyncs).
fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), MetricsError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let write_err = |source| MetricsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".vmpilot-metrics-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|source| MetricsError::Directory {
            path: path.to_path_buf(),
            source,
        })?;
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(write_err)?;
    // On failure the temp file is removed when `PersistError` (which owns it) is dropped.
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    Ok(())
}

/// The metrics in Prometheus text exposition format (version 0.0.4), as of `now`.
///
/// Families always appear in the same order with their `# HELP` and `# TYPE` lines, and
/// leases are sorted by id, so two renders of the same input are byte-identical.
pub fn render(
    node: &str,
    leases: &[LeaseRecord],
    spool: Option<&Backlog>,
    failures: &BTreeMap<String, u64>,
    now: OffsetDateTime,
) -> String {
    let mut shown: Vec<&LeaseRecord> = leases
        .iter()
        .filter(|r| !r.state.is_terminal() || now - last_change(r) <= FINISHED_RETENTION)
        .collect();
    shown.sort_by(|a, b| a.lease_id.cmp(&b.lease_id));
    let node_label = format!("node=\"{}\"", escape_label_value(node));
    let lease_labels = |r: &LeaseRecord| {
        format!(
            "{node_label},lease=\"{}\"",
            escape_label_value(r.lease_id.as_str())
        )
    };
    let mut out = Exposition::default();

    let hosting = leases.iter().any(|r| r.state.holds_host());
    out.family(
        "vmpilot_node_hosting",
        "gauge",
        "1 while any lease may hold this node's resources (reserving, reserved, unreserving or failed), else 0.",
    );
    out.sample(
        "vmpilot_node_hosting",
        &node_label,
        f64::from(u8::from(hosting)),
    );

    out.family(
        "vmpilot_lease_state",
        "gauge",
        "Lease state: 1 for the lease's current state, 0 for the others.",
    );
    for r in &shown {
        for state in LeaseState::ALL {
            let labels = format!("{},state=\"{}\"", lease_labels(r), state.as_str());
            out.sample(
                "vmpilot_lease_state",
                &labels,
                f64::from(u8::from(r.state == state)),
            );
        }
    }

    out.family(
        "vmpilot_lease_deadline_seconds",
        "gauge",
        "When the lease must be over, in seconds since the Unix epoch.",
    );
    for r in &shown {
        out.sample(
            "vmpilot_lease_deadline_seconds",
            &lease_labels(r),
            r.deadline.unix_timestamp() as f64,
        );
    }

    out.family(
        "vmpilot_lease_reserve_duration_seconds",
        "gauge",
        "Seconds from entering reserving to entering reserved (switching the node into hosting mode).",
    );
    for r in &shown {
        if let Some(d) = span(r, LeaseState::Reserving, LeaseState::Reserved) {
            out.sample(
                "vmpilot_lease_reserve_duration_seconds",
                &lease_labels(r),
                d,
            );
        }
    }

    out.family(
        "vmpilot_lease_signal_to_restored_seconds",
        "gauge",
        "Seconds from the first entry into unreserving (deadline, signal, admin or recovery) to unreserved (node restored).",
    );
    for r in &shown {
        if let Some(d) = span(r, LeaseState::Unreserving, LeaseState::Unreserved) {
            out.sample(
                "vmpilot_lease_signal_to_restored_seconds",
                &lease_labels(r),
                d,
            );
        }
    }

    if let Some(b) = spool {
        out.family(
            "vmpilot_spool_depth",
            "gauge",
            "Events waiting in the spool for delivery to the coordinator.",
        );
        out.sample("vmpilot_spool_depth", &node_label, b.pending as f64);
        out.family(
            "vmpilot_spool_oldest_age_seconds",
            "gauge",
            "Age of the oldest undelivered event in seconds, 0 when the spool is empty.",
        );
        out.sample(
            "vmpilot_spool_oldest_age_seconds",
            &node_label,
            b.oldest_age_secs.unwrap_or(0) as f64,
        );
        out.family(
            "vmpilot_spool_rejected",
            "gauge",
            "Events the coordinator refused (4xx), kept in spool/rejected for inspection.",
        );
        out.sample("vmpilot_spool_rejected", &node_label, b.rejected as f64);
    }

    out.family(
        "vmpilot_failures_total",
        "counter",
        "Failures on this node by kind.",
    );
    for (kind, count) in failures {
        let labels = format!("{node_label},kind=\"{}\"", escape_label_value(kind));
        out.sample("vmpilot_failures_total", &labels, *count as f64);
    }

    out.text
}

/// Text being built: metric families and their samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        let _ = writeln!(self.text, "{name}{{{labels}}} {}", format_value(value));
    }
}

/// When the record last changed state (its last history entry), or its deadline when it has
/// no history (a hand-made record): used only to age finished leases out.
fn last_change(r: &LeaseRecord) -> OffsetDateTime {
    r.history.last().map(|h| h.at).unwrap_or(r.deadline)
}

/// Seconds from the first entry into `from` to the first entry into `to` after it. `None`
/// when either is missing, or when the wall clock stepped back in between (a negative
/// duration is no measurement; no sample is better than a wrong one).
fn span(r: &LeaseRecord, from: LeaseState, to: LeaseState) -> Option<f64> {
    let start = r.history.iter().position(|h| h.state == from)?;
    let end = r.history[start..].iter().find(|h| h.state == to)?;
    let secs = (end.at - r.history[start].at).as_seconds_f64();
    (secs >= 0.0).then_some(secs)
}

/// A label value escaped for the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escaped for the text format: `\` → `\\`, newline → `\n`.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value: integers without a fraction, the special values as Prometheus spells them.
fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Every metric family name [`render`] can emit, in output order (docs/metrics.md lists the
/// same names; a test keeps the two equal).
pub const METRIC_NAMES: [&str; 9] = [
    "vmpilot_node_hosting",
    "vmpilot_lease_state",
    "vmpilot_lease_deadline_seconds",
    "vmpilot_lease_reserve_duration_seconds",
    "vmpilot_lease_signal_to_restored_seconds",
    "vmpilot_spool_depth",
    "vmpilot_spool_oldest_age_seconds",
    "vmpilot_spool_rejected",
    "vmpilot_failures_total",
];

/// The label names used across all families (for docs and tests).
pub fn label_names() -> BTreeSet<&'static str> {
    ["node", "lease", "state", "kind"].into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::record::{HistoryEntry, RECORD_VERSION};
    use crate::process::ProcessIdentity;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-05-01 12:00:00 UTC);

    fn record(id: &str, history: &[(LeaseState, OffsetDateTime)]) -> LeaseRecord {
        LeaseRecord {
            version: RECORD_VERSION,
            lease_id: id.parse().expect("test lease id is valid"),
            epoch: 1,
            state: history.last().map(|h| h.0).unwrap_or(LeaseState::Begin),
            end_reason: None,
            node: "n1".into(),
            job_id: Some("42".into()),
            memory_mib: 1024,
            cpus: 2,
            grace_secs: 60,
            deadline: datetime!(2026-05-01 13:00:00 UTC),
            pilot: ProcessIdentity {
                pid: 1,
                start_time: 0,
                start_ticks: None,
                boot_id: String::new(),
            },
            host_backend: "simulated".into(),
            baseline: None,
            next_seq: 0,
            guests: vec![],
            last_error: None,
            history: history
                .iter()
                .map(|(state, at)| HistoryEntry {
                    state: *state,
                    event: "test".into(),
                    at: *at,
                })
                .collect(),
            end_report: Default::default(),
        }
    }

    /// One parsed sample line.
    #[derive(Debug, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A strict reader of the text exposition format, enough to reject anything node_exporter
    /// would: HELP then TYPE once per family before its samples, families contiguous, valid
    /// names, quoted and escaped label values, a float value, no timestamp, no duplicate series.
    fn parse(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "the file must end with a newline");
        let mut samples: Vec<Sample> = Vec::new();
        let mut families: Vec<String> = Vec::new();
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut helped: BTreeSet<String> = BTreeSet::new();
        let mut series: BTreeSet<String> = BTreeSet::new();
        for (n, line) in text.lines().enumerate() {
            let at = format!("line {}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(&at);
                assert!(valid_name(name), "{at}");
                assert!(!help.is_empty(), "{at}");
                assert!(helped.insert(name.into()), "HELP twice: {at}");
                assert!(
                    !families.contains(&name.to_string()),
                    "HELP after samples: {at}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect(&at);
                assert!(valid_name(name), "{at}");
                assert!(["gauge", "counter"].contains(&kind), "{at}");
                assert!(helped.contains(name), "TYPE without HELP first: {at}");
                assert!(typed.insert(name.into(), kind.into()).is_none(), "{at}");
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{at}");
            let (name, rest) = line.split_at(line.find('{').expect(&at));
            assert!(valid_name(name), "{at}");
            assert!(typed.contains_key(name), "sample before its TYPE: {at}");
            if families.last().map(String::as_str) != Some(name) {
                assert!(!families.contains(&name.to_string()), "family split: {at}");
                families.push(name.into());
            }
            let close = rest.rfind("} ").expect(&at);
            let labels = parse_labels(&rest[1..close], &at);
            let value = &rest[close + 2..];
            assert!(!value.contains(' '), "no timestamps: {at}");
            let value: f64 = value.parse().expect(&at);
            assert!(
                series.insert(format!("{name}{labels:?}")),
                "duplicate: {at}"
            );
            samples.push(Sample {
                name: name.into(),
                labels,
                value,
            });
        }
        samples
    }

    fn valid_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn parse_labels(s: &str, at: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut chars = s.chars().peekable();
        while chars.peek().is_some() {
            let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert!(
                valid_name(&name) && !name.starts_with("__"),
                "label name: {at}"
            );
            assert_eq!(chars.next(), Some('"'), "{at}");
            let mut value = String::new();
            loop {
                match chars.next().expect(at) {
                    '"' => break,
                    '\\' => match chars.next().expect(at) {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => panic!("bad escape \\{other}: {at}"),
                    },
                    '\n' => panic!("raw newline: {at}"),
                    c => value.push(c),
                }
            }
            assert!(labels.insert(name, value).is_none(), "{at}");
            match chars.next() {
                None => break,
                Some(',') => {}
                Some(c) => panic!("unexpected {c:?}: {at}"),
            }
        }
        labels
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
        samples.iter().find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        find(samples, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .value
    }

    fn finished_lease() -> LeaseRecord {
        let t0 = datetime!(2026-05-01 11:00:00 UTC);
        record(
            "slot-done",
            &[
                (LeaseState::Begin, t0),
                (LeaseState::Reserving, t0 + Duration::milliseconds(10)),
                (LeaseState::Reserved, t0 + Duration::milliseconds(1510)),
                (LeaseState::Unreserving, t0 + Duration::minutes(50)),
                // A second unreserving (after a failure) must not move the start.
                (LeaseState::Failed, t0 + Duration::minutes(51)),
                (LeaseState::Unreserving, t0 + Duration::minutes(52)),
                (
                    LeaseState::Unreserved,
                    t0 + Duration::minutes(52) + Duration::milliseconds(250),
                ),
            ],
        )
    }

    fn reserved_lease(t: OffsetDateTime) -> LeaseRecord {
        record(
            "slot-7",
            &[
                (LeaseState::Begin, t),
                (LeaseState::Reserving, t),
                (LeaseState::Reserved, t + Duration::seconds(3)),
            ],
        )
    }

    #[test]
    fn every_line_is_valid_and_values_are_right() {
        let t = datetime!(2026-05-01 11:30:00 UTC);
        let live = reserved_lease(t);
        let failures = BTreeMap::from([("host".to_string(), 2), ("coordinator".to_string(), 5)]);
        let backlog = Backlog {
            pending: 3,
            oldest_age_secs: Some(95),
            rejected: 1,
        };
        let text = render(
            "n1",
            &[finished_lease(), live],
            Some(&backlog),
            &failures,
            NOW,
        );
        let s = parse(&text);

        assert_eq!(value(&s, "vmpilot_node_hosting", &[("node", "n1")]), 1.0);
        for state in LeaseState::ALL {
            let expected = if state == LeaseState::Reserved {
                1.0
            } else {
                0.0
            };
            let labels = [("lease", "slot-7"), ("state", state.as_str())];
            assert_eq!(
                value(&s, "vmpilot_lease_state", &labels),
                expected,
                "{state}"
            );
        }
        let ones: f64 = s
            .iter()
            .filter(|x| x.name == "vmpilot_lease_state" && x.labels["lease"] == "slot-done")
            .map(|x| x.value)
            .sum();
        assert_eq!(ones, 1.0, "exactly one current state");
        assert_eq!(
            value(
                &s,
                "vmpilot_lease_state",
                &[("lease", "slot-done"), ("state", "unreserved")]
            ),
            1.0
        );
        assert_eq!(
            value(&s, "vmpilot_lease_deadline_seconds", &[("lease", "slot-7")]),
            datetime!(2026-05-01 13:00:00 UTC).unix_timestamp() as f64
        );
        let reserve = [("lease", "slot-done")];
        assert_eq!(
            value(&s, "vmpilot_lease_reserve_duration_seconds", &reserve),
            1.5
        );
        assert_eq!(
            value(
                &s,
                "vmpilot_lease_reserve_duration_seconds",
                &[("lease", "slot-7")]
            ),
            3.0
        );
        assert_eq!(
            value(&s, "vmpilot_lease_signal_to_restored_seconds", &reserve),
            120.25
        );
        assert!(
            find(
                &s,
                "vmpilot_lease_signal_to_restored_seconds",
                &[("lease", "slot-7")]
            )
            .is_none(),
            "a lease still reserved has no restore time"
        );
        assert_eq!(value(&s, "vmpilot_spool_depth", &[]), 3.0);
        assert_eq!(value(&s, "vmpilot_spool_oldest_age_seconds", &[]), 95.0);
        assert_eq!(value(&s, "vmpilot_spool_rejected", &[]), 1.0);
        assert_eq!(
            value(&s, "vmpilot_failures_total", &[("kind", "host")]),
            2.0
        );
        assert_eq!(
            value(&s, "vmpilot_failures_total", &[("kind", "coordinator")]),
            5.0
        );
        assert!(s.iter().all(|x| x.labels["node"] == "n1"));
        assert!(text.contains("# TYPE vmpilot_failures_total counter\n"));
        assert!(text.contains("# TYPE vmpilot_lease_state gauge\n"));
        // Deterministic and independent of the records' order.
        let mut reversed = vec![reserved_lease(t), finished_lease()];
        reversed.reverse();
        let again = render("n1", &reversed, Some(&backlog), &failures, NOW);
        assert_eq!(
            again,
            render(
                "n1",
                &[finished_lease(), reserved_lease(t)],
                Some(&backlog),
                &failures,
                NOW
            )
        );
        assert_eq!(again, text);
    }

    #[test]
    fn idle_node_without_coordinator() {
        let text = render("n1", &[], None, &BTreeMap::new(), NOW);
        let s = parse(&text);
        assert_eq!(value(&s, "vmpilot_node_hosting", &[]), 0.0);
        assert_eq!(s.len(), 1, "only the hosting gauge has a sample: {text}");
        assert!(
            !text.contains("vmpilot_spool"),
            "no coordinator, no spool metrics"
        );
        // Every family is still announced (node_exporter accepts empty families).
        for name in METRIC_NAMES
            .iter()
            .filter(|n| !n.starts_with("vmpilot_spool"))
        {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
    }

    #[test]
    fn old_finished_leases_age_out_but_open_ones_never_do() {
        let later = NOW + Duration::hours(3);
        let mut old_open = record(
            "slot-open",
            &[(LeaseState::Reserved, datetime!(2026-04-01 0:00 UTC))],
        );
        old_open.state = LeaseState::Reserved;
        let text = render(
            "n1",
            &[finished_lease(), old_open],
            None,
            &BTreeMap::new(),
            later,
        );
        assert!(!text.contains("slot-done"), "{text}");
        assert!(text.contains("lease=\"slot-open\""), "{text}");
        assert_eq!(value(&parse(&text), "vmpilot_node_hosting", &[]), 1.0);
    }

    #[test]
    fn a_failed_lease_counts_as_hosting_and_has_no_restore_time() {
        let t = datetime!(2026-05-01 11:59:00 UTC);
        let failed = record(
            "slot-f",
            &[
                (LeaseState::Reserving, t),
                (LeaseState::Reserved, t),
                (LeaseState::Unreserving, t),
                (LeaseState::Failed, t + Duration::seconds(5)),
            ],
        );
        let s = parse(&render("n1", &[failed], None, &BTreeMap::new(), NOW));
        assert_eq!(value(&s, "vmpilot_node_hosting", &[]), 1.0);
        assert_eq!(
            value(&s, "vmpilot_lease_state", &[("state", "failed")]),
            1.0
        );
        assert!(find(&s, "vmpilot_lease_signal_to_restored_seconds", &[]).is_none());
        assert_eq!(
            value(&s, "vmpilot_lease_reserve_duration_seconds", &[]),
            0.0
        );
    }

    #[test]
    fn a_clock_step_back_gives_no_sample() {
        let t = datetime!(2026-05-01 11:59:00 UTC);
        let r = record(
            "slot-c",
            &[
                (LeaseState::Reserving, t),
                (LeaseState::Reserved, t - Duration::seconds(30)),
            ],
        );
        let s = parse(&render("n1", &[r], None, &BTreeMap::new(), NOW));
        assert!(find(&s, "vmpilot_lease_reserve_duration_seconds", &[]).is_none());
    }

    #[test]
    fn label_values_are_escaped() {
        let node = "we\"ird\\node\nname";
        let failures = BTreeMap::from([("a\"b".to_string(), 1)]);
        let text = render(node, &[], None, &failures, NOW);
        assert!(text.contains(r#"node="we\"ird\\node\nname""#), "{text}");
        let s = parse(&text);
        assert_eq!(s[0].labels["node"], node, "round trip");
        assert_eq!(
            value(&s, "vmpilot_failures_total", &[("kind", "a\"b")]),
            1.0
        );
        assert_eq!(escape_label_value("plain-1.2_x"), "plain-1.2_x");
    }

    #[test]
    fn values_are_formatted_as_prometheus_reads_them() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(1_777_000_000.0), "1777000000");
        assert_eq!(format_value(1.5), "1.5");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn write_replaces_the_file_atomically_and_world_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vmpilot.prom");
        std::fs::write(&path, "old").expect("seed");
        write(&path, "n1", &[finished_lease()], None, &BTreeMap::new()).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        parse(&text);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("vmpilot.prom")],
            "no temp file left"
        );
    }

    #[test]
    fn write_into_a_missing_directory_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing/vmpilot.prom");
        let err = write(&path, "n1", &[], None, &BTreeMap::new()).expect_err("must fail");
        assert!(matches!(err, MetricsError::Directory { .. }));
        assert!(err.to_string().contains("missing/vmpilot.prom"), "{err}");
    }

    #[test]
    fn docs_list_every_metric() {
        let docs = include_str!("../docs/metrics.md");
        for name in METRIC_NAMES {
            assert!(
                docs.contains(&format!("`{name}`")),
                "docs/metrics.md lacks {name}"
            );
        }
        for label in label_names() {
            assert!(
                docs.contains(&format!("`{label}`")),
                "docs/metrics.md lacks label {label}"
            );
        }
        let text = render(
            "n1",
            &[finished_lease()],
            Some(&Backlog {
                pending: 0,
                oldest_age_secs: None,
                rejected: 0,
            }),
            &BTreeMap::new(),
            NOW,
        );
        let emitted: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(emitted, METRIC_NAMES, "METRIC_NAMES is the output order");
    }
}
