//! `GET /`: the status page, server-rendered HTML with no scripts and no build step.
//!
//! It shows what an operator needs at a glance: trouble first (failed leases, lost leases,
//! host errors), then leases with state and time left, nodes, recent events and pilots. The
//! page refreshes itself every 10 s with a `<meta>` tag. Every value from the database goes
//! through [`esc`], since node names, reasons and errors come from the network.

use std::fmt::Write;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::query::{EventView, LeaseView, NodeView, PilotView, Snapshot};

/// Escape text for HTML element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `2026-11-22T19:45:50.848Z` → `2026-11-22 19:45:50` (the page is for people; the API
/// keeps full precision).
pub fn short_time(s: &str) -> String {
    let end = s.char_indices().nth(19).map_or(s.len(), |(i, _)| i);
    esc(&s[..end].replacen('T', " ", 1))
}

fn opt_time(s: &Option<String>) -> String {
    s.as_deref().map(short_time).unwrap_or_else(|| "–".into())
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(esc).unwrap_or_else(|| "–".into())
}

/// `1h 02m`, `45s`, `overdue 12s`.
pub fn human_secs(secs: i64) -> String {
    let (sign, s) = if secs < 0 {
        ("overdue ", -secs)
    } else {
        ("", secs)
    };
    let text = match s {
        s if s >= 86400 => format!("{}d {:02}h", s / 86400, (s % 86400) / 3600),
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    };
    format!("{sign}{text}")
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1b1f24;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.sub{color:#57606a;margin-bottom:1em}
.cards{display:flex;gap:.8em;flex-wrap:wrap}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.5em 1em;min-width:7em}
.card b{display:block;font-size:1.5em}
.card.bad{border-color:#cf222e;background:#ffebe9}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f3f6}
tr.bad td{background:#ffebe9}
.err{color:#cf222e;font-weight:600}
.state{font-weight:600}
.s-reserved{color:#1a7f37}.s-unreserving{color:#9a6700}.s-failed,.s-lost{color:#cf222e}
.muted{color:#57606a} code{font-size:.95em}
";

/// The page.
pub async fn status_page(State(state): State<AppState>) -> Response {
    match state.db.snapshot().await {
        Ok(snap) => {
            let pool = state.pool.as_ref().map(|p| p.status());
            Html(render(&snap, pool.as_ref())).into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(format!(
                "<!doctype html><title>vmpilot coordinator</title><p>database unavailable: {}</p>",
                esc(&e.to_string())
            )),
        )
            .into_response(),
    }
}

/// Render a snapshot (pure, so it can be tested without a server).
pub fn render(snap: &Snapshot, pool: Option<&super::pool::PoolStatus>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let active = snap
        .leases
        .iter()
        .filter(|l| matches!(l.state.as_str(), "reserved" | "unreserving") && !l.lost)
        .count();
    let trouble: Vec<&LeaseView> = snap.leases.iter().filter(|l| l.is_trouble()).collect();
    let now = short_time(&super::db::rfc3339(time::OffsetDateTime::now_utc()));
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\"><title>vmpilot coordinator</title>\
         <style>{STYLE}</style></head><body><h1>vmpilot coordinator</h1>\
         <div class=\"sub\">as of {now} UTC · refreshes every 10 s · JSON at <code>/v1/leases</code>, \
         <code>/v1/nodes</code>, <code>/v1/events</code></div><div class=\"cards\">"
    );
    card(&mut h, "nodes", snap.nodes.len(), false);
    card(&mut h, "active leases", active, false);
    card(&mut h, "failed or lost", trouble.len(), !trouble.is_empty());
    if let Some(p) = pool {
        let text = format!(
            "{} / {}",
            p.active.map_or("?".into(), |a| a.to_string()),
            p.target
        );
        let _ = write!(
            h,
            "<div class=\"card{}\"><b>{}</b>pilots (active / target){}</div>",
            if p.last_error.is_some() { " bad" } else { "" },
            esc(&text),
            p.last_error
                .as_deref()
                .map(|e| format!("<br><small>{}</small>", esc(e)))
                .unwrap_or_default()
        );
    }
    h.push_str("</div>");
    if !trouble.is_empty() {
        h.push_str("<h2>Failures</h2>");
        lease_table(&mut h, &trouble);
    }
    h.push_str("<h2>Leases</h2>");
    let all: Vec<&LeaseView> = snap.leases.iter().collect();
    lease_table(&mut h, &all);
    node_table(&mut h, &snap.nodes);
    event_table(&mut h, &snap.events);
    pilot_table(&mut h, &snap.pilots);
    h.push_str("</body></html>\n");
    h
}

fn card(h: &mut String, label: &str, n: usize, bad: bool) {
    let class = if bad { "card bad" } else { "card" };
    let _ = write!(h, "<div class=\"{class}\"><b>{n}</b>{}</div>", esc(label));
}

fn lease_table(h: &mut String, leases: &[&LeaseView]) {
    if leases.is_empty() {
        h.push_str("<p class=\"muted\">No leases yet.</p>");
        return;
    }
    h.push_str(
        "<table><tr><th>lease</th><th>epoch</th><th>node</th><th>job</th><th>state</th>\
         <th>reason</th><th>memory</th><th>cpus</th><th>deadline</th><th>time left</th>\
         <th>last seen</th><th>guests</th><th>directives</th></tr>",
    );
    for l in leases {
        let state = if l.lost {
            format!("{} (lost)", l.state)
        } else {
            l.state.clone()
        };
        let state_class = if l.lost { "lost" } else { l.state.as_str() };
        let mut reason = opt(&l.reason);
        if let Some(e) = l.error.as_deref().or(l.note.as_deref()) {
            let _ = write!(reason, "<br><small>{}</small>", esc(e));
        }
        // Reported fates first; then what the coordinator launched and has no fate yet
        // (running, or a template that failed to start, highlighted).
        let guests = l
            .guests
            .iter()
            .map(|g| format!("{}: {}", esc(&g.name), esc(&g.fate)))
            .chain(
                l.launched
                    .iter()
                    .filter(|x| !l.guests.iter().any(|g| g.name == x.domain))
                    .map(|x| {
                        let text = format!("{}: {}", esc(&x.domain), esc(&x.status));
                        match (&x.detail, x.status.as_str()) {
                            (Some(d), "failed") => {
                                format!("<span class=\"err\" title=\"{}\">{text}</span>", esc(d))
                            }
                            _ => text,
                        }
                    }),
            )
            .collect::<Vec<_>>()
            .join("<br>");
        let directives = l
            .pending_directives
            .iter()
            .map(|d| esc(&d.kind))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            h,
            "<tr class=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"state s-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if l.is_trouble() { "bad" } else { "" },
            esc(&l.lease_id),
            l.epoch,
            esc(&l.node),
            opt(&l.job_id),
            esc(state_class),
            esc(&state),
            reason,
            l.memory_mib.map_or("–".into(), |m| format!("{m} MiB")),
            l.cpus.map_or("–".into(), |c| c.to_string()),
            opt_time(&l.deadline),
            l.time_left_secs.map_or("–".into(), human_secs),
            short_time(&l.last_seen),
            if guests.is_empty() {
                "–".into()
            } else {
                guests
            },
            if directives.is_empty() {
                "–".into()
            } else {
                directives
            },
        );
    }
    h.push_str("</table>");
}

fn node_table(h: &mut String, nodes: &[NodeView]) {
    h.push_str("<h2>Nodes</h2>");
    if nodes.is_empty() {
        h.push_str("<p class=\"muted\">No node has reported yet.</p>");
        return;
    }
    h.push_str(
        "<table><tr><th>node</th><th>active leases</th><th>failed or lost</th>\
         <th>last lease</th><th>last job</th><th>first seen</th><th>last seen</th></tr>",
    );
    for n in nodes {
        let last = match (&n.last_lease, n.last_epoch) {
            (Some(l), Some(e)) => format!("{} #{e}", esc(l)),
            _ => "–".into(),
        };
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if n.troubled_leases > 0 { "bad" } else { "" },
            esc(&n.name),
            n.active_leases,
            n.troubled_leases,
            last,
            opt(&n.last_job_id),
            short_time(&n.first_seen),
            short_time(&n.last_seen),
        );
    }
    h.push_str("</table>");
}

fn event_summary(e: &EventView) -> String {
    let v = &e.event;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    match e.kind.as_str() {
        "reserved" => format!(
            "{} MiB, {} cpus, until {}",
            v.get("memory_mib").and_then(|x| x.as_u64()).unwrap_or(0),
            v.get("cpus").and_then(|x| x.as_u64()).unwrap_or(0),
            field("deadline").unwrap_or_default()
        ),
        "heartbeat" => format!(
            "{}, deadline {}",
            field("state").unwrap_or_default(),
            field("deadline").unwrap_or_default()
        ),
        "failed" => format!(
            "{}: {}",
            field("reason").unwrap_or_default(),
            field("error").unwrap_or_default()
        ),
        "directive" => v
            .get("directive")
            .and_then(|d| d.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string(),
        "over-budget" => format!(
            "{} ({})",
            field("detail").unwrap_or_default(),
            field("action").unwrap_or_default()
        ),
        "killed" => format!(
            "by {}: {}",
            field("by").unwrap_or_default(),
            field("why").unwrap_or_default()
        ),
        _ => field("reason")
            .or_else(|| field("outcome"))
            .unwrap_or_default(),
    }
}

fn event_table(h: &mut String, events: &[EventView]) {
    h.push_str("<h2>Recent events</h2>");
    if events.is_empty() {
        h.push_str("<p class=\"muted\">No events yet.</p>");
        return;
    }
    h.push_str(
        "<table><tr><th>#</th><th>received</th><th>from</th><th>type</th><th>lease</th>\
         <th>epoch</th><th>seq</th><th>node</th><th>detail</th></tr>",
    );
    for e in events {
        let bad = matches!(e.kind.as_str(), "failed" | "lost")
            || e.event.get("reason").and_then(|r| r.as_str()) == Some("host-error");
        let _ = write!(
            h,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if bad { "bad" } else { "" },
            e.cursor,
            short_time(&e.received_at),
            esc(&e.source),
            esc(&e.kind),
            opt(&e.lease_id),
            e.epoch.map_or("–".into(), |x| x.to_string()),
            e.seq.map_or("–".into(), |x| x.to_string()),
            opt(&e.node),
            esc(&event_summary(e)),
        );
    }
    h.push_str("</table>");
}

fn pilot_table(h: &mut String, pilots: &[PilotView]) {
    if pilots.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Submitted pilots</h2><table><tr><th>job</th><th>system</th><th>by</th>\
         <th>submitted</th><th>memory</th><th>cpus</th><th>time</th><th>lease</th></tr>",
    );
    for p in pilots {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.job_id),
            esc(&p.batch_system),
            esc(&p.origin),
            short_time(&p.submitted_at),
            opt(&p.memory),
            p.cpus.map_or("–".into(), |c| c.to_string()),
            opt(&p.time_limit),
            opt(&p.lease_id),
        );
    }
    h.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(human_secs(45), "45s");
        assert_eq!(human_secs(3725), "1h 02m");
        assert_eq!(human_secs(-12), "overdue 12s");
        assert_eq!(human_secs(90000), "1d 01h");
        assert_eq!(
            short_time("2026-11-22T19:45:50.848Z"),
            "2026-11-22 19:45:50"
        );
        assert_eq!(short_time("x"), "x");
    }

    #[test]
    fn an_empty_coordinator_renders() {
        let snap = Snapshot {
            nodes: vec![],
            leases: vec![],
            events: vec![],
            pilots: vec![],
        };
        let page = render(&snap, None);
        assert!(page.contains("No leases yet") && page.ends_with("</html>\n"));
    }
}
