//! The webhook bodies for chat tools: a Slack incoming-webhook message and
//! a Microsoft Teams message with an Adaptive Card.
//!
//! The free text in a diagnosis (the summary and advice name processes,
//! and a process picks its own name) is escaped for each format, so that a
//! process called `<!channel>` pings nobody and a name with `*` or `[..](..)`
//! formats nothing:
//!
//! - Slack reads `&`, `<` and `>` as markup in `mrkdwn` text (links,
//!   mentions), so they become `&amp;`, `&lt;`, `&gt;`, as Slack's
//!   formatting reference asks. The header is a `plain_text` object, shown
//!   as written.
//! - Teams reads markdown in a `TextBlock` and, on some clients, ignores
//!   backslash escapes; so free text goes into `TextRun`s of a
//!   `RichTextBlock`, which Adaptive Cards never read as markdown. Only our
//!   own words are `TextBlock`s; the facts hold host names, addresses,
//!   numbers and times.
//!
//! Slack's limits are kept: a header of at most 150 characters, section
//! text of at most 3000, fields of at most 2000, at most 10 fields; longer
//! text is cut at a character (never inside an escape) and ends in `…`.

use serde_json::{json, Value};

use super::delivery::{endpoint, verb, Suppressed};
use crate::diagnose::record::{DiagnosisRecord, Status};

/// Slack's limits (Block Kit reference), in characters.
pub const SLACK_HEADER_MAX: usize = 150;
pub const SLACK_SECTION_MAX: usize = 3000;
pub const SLACK_FIELD_MAX: usize = 2000;

/// What a Teams card carries of a summary or an advice: well within the
/// 28 KB a Teams message may have.
const TEAMS_TEXT_MAX: usize = 3000;

/// The facts both formats show, in this order.
fn facts(d: &DiagnosisRecord, host: &str) -> [(&'static str, String); 6] {
    let g = &d.diagnosis;
    [
        ("Host", host.to_owned()),
        ("Endpoint", endpoint(d)),
        ("Count", g.count.to_string()),
        ("Clients", g.clients.to_string()),
        ("First seen", humantime::format_rfc3339_millis(g.first_seen).to_string()),
        ("Last seen", humantime::format_rfc3339_seconds(g.last_seen).to_string()),
    ]
}

fn headline(d: &DiagnosisRecord, host: &str) -> String {
    format!("{} {} on {host}", d.diagnosis.kind, verb(d.diagnosis.status))
}

/// The one-line `message` of the JSON body, the Slack notification text.
pub fn message(d: &DiagnosisRecord, host: &str) -> String {
    format!(
        "observer on {host}: {} {} on port {}: {}",
        d.diagnosis.kind,
        verb(d.diagnosis.status),
        d.destination.port,
        d.diagnosis.summary
    )
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Slack `mrkdwn` text: `&`, `<`, `>` escaped, at most `max` characters
/// after escaping, cut between escapes.
pub fn mrkdwn(s: &str, max: usize) -> String {
    let escaped = |c: char| match c {
        '&' => "&amp;".to_owned(),
        '<' => "&lt;".to_owned(),
        '>' => "&gt;".to_owned(),
        c => c.to_string(),
    };
    let pieces: Vec<String> = s.chars().map(escaped).collect();
    let total: usize = pieces.iter().map(|p| p.chars().count()).sum();
    if total <= max {
        return pieces.concat();
    }
    let mut out = String::new();
    let mut len = 0;
    for p in pieces {
        let n = p.chars().count();
        if len + n > max.saturating_sub(1) {
            break;
        }
        out.push_str(&p);
        len += n;
    }
    out.push('…');
    out
}

fn slack_field(label: &str, value: &str) -> Value {
    json!({ "type": "mrkdwn", "text": mrkdwn(&format!("*{label}*\n{value}"), SLACK_FIELD_MAX) })
}

/// A Slack incoming-webhook message: `text` (the notification and the
/// fallback), then a header, the summary, the facts, the advice as a
/// bulleted list, and a context line with the id and the command to run.
pub fn slack(d: &DiagnosisRecord, host: &str, why: &str) -> Value {
    let g = &d.diagnosis;
    let fields: Vec<Value> = facts(d, host).iter().map(|(k, v)| slack_field(k, v)).collect();
    let mut blocks = vec![
        json!({ "type": "header", "text": { "type": "plain_text", "text": clip(&headline(d, host), SLACK_HEADER_MAX) } }),
        json!({ "type": "section", "text": { "type": "mrkdwn", "text": mrkdwn(&g.summary, SLACK_SECTION_MAX) } }),
        json!({ "type": "section", "fields": fields }),
    ];
    if !g.advice.is_empty() {
        // Escaped item by item, so that the bold label and the bullets are ours.
        let items: Vec<String> = g.advice.iter().map(|a| format!("• {}", mrkdwn(a, SLACK_SECTION_MAX))).collect();
        let text = format!("*What to do*\n{}", items.join("\n"));
        let text = if text.chars().count() > SLACK_SECTION_MAX { clip_escaped(&text) } else { text };
        blocks.push(json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{ "type": "mrkdwn", "text": mrkdwn(&format!("Diagnosis {} · more: `{why}` on {host}", g.id), SLACK_FIELD_MAX) }],
    }));
    json!({ "text": mrkdwn(&message(d, host), SLACK_SECTION_MAX), "blocks": blocks })
}

/// Already escaped text cut to Slack's section limit, never inside an
/// entity (`&amp;`): the cut backs off to before the last `&` when a `;`
/// does not follow it.
fn clip_escaped(text: &str) -> String {
    let mut out: String = text.chars().take(SLACK_SECTION_MAX - 1).collect();
    if let Some(amp) = out.rfind('&') {
        if !out[amp..].contains(';') {
            out.truncate(amp);
        }
    }
    out.push('…');
    out
}

/// The Slack message of a rate-limit summary.
pub fn slack_summary(s: &Suppressed, host: &str, per_minute: usize) -> Value {
    let text = mrkdwn(&s.message(host, per_minute), SLACK_SECTION_MAX);
    json!({ "text": text, "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": text } }] })
}

fn text_run(text: &str) -> Value {
    json!({ "type": "TextRun", "text": clip(text, TEAMS_TEXT_MAX) })
}

/// The envelope Teams workflows and incoming webhooks take: a message with
/// one Adaptive Card 1.4 attachment.
fn teams_message(body: Vec<Value>, fallback: &str) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": { "width": "Full" },
                "fallbackText": clip(fallback, TEAMS_TEXT_MAX),
                "body": body,
            },
        }],
    })
}

/// A Teams message: the headline, the summary, the facts, the advice, and
/// the command to run.
pub fn teams(d: &DiagnosisRecord, host: &str, why: &str) -> Value {
    let g = &d.diagnosis;
    let color = if g.status == Status::Escalated { "Attention" } else { "Warning" };
    let mut headline_run = text_run(&headline(d, host));
    if let Some(run) = headline_run.as_object_mut() {
        run.insert("size".into(), "Large".into());
        run.insert("weight".into(), "Bolder".into());
        run.insert("color".into(), color.into());
    }
    let facts: Vec<Value> = facts(d, host).iter().map(|(k, v)| json!({ "title": k, "value": v })).collect();
    let mut body = vec![
        json!({ "type": "RichTextBlock", "inlines": [headline_run] }),
        json!({ "type": "RichTextBlock", "inlines": [text_run(&g.summary)] }),
        json!({ "type": "FactSet", "facts": facts }),
    ];
    if !g.advice.is_empty() {
        body.push(json!({ "type": "TextBlock", "text": "What to do", "weight": "Bolder", "wrap": true }));
        for a in &g.advice {
            body.push(json!({ "type": "RichTextBlock", "inlines": [text_run(&format!("• {a}"))] }));
        }
    }
    body.push(json!({
        "type": "RichTextBlock",
        "inlines": [
            { "type": "TextRun", "text": format!("Diagnosis {} · more: ", g.id), "isSubtle": true },
            { "type": "TextRun", "text": why, "fontType": "Monospace" },
            { "type": "TextRun", "text": format!(" on {host}"), "isSubtle": true },
        ],
    }));
    teams_message(body, &message(d, host))
}

/// The Teams message of a rate-limit summary.
pub fn teams_summary(s: &Suppressed, host: &str, per_minute: usize) -> Value {
    let text = s.message(host, per_minute);
    teams_message(vec![json!({ "type": "RichTextBlock", "inlines": [text_run(&text)] })], &text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed diagnosis whose free text holds every character that means
    /// something to Slack or Teams.
    pub fn diagnosis() -> DiagnosisRecord {
        let v = json!({
            "@timestamp": "2026-01-01T00:00:05Z",
            "event": { "dataset": "observer.diagnosis", "kind": "alert", "category": ["network"] },
            "diagnosis": {
                "kind": "no_listener", "id": "a41c0a3c2e8f1b77", "status": "open",
                "summary": "Nothing listens on port 8080 since <!channel> & *web* (pid 7) stopped.",
                "advice": ["Start <web> again.", "Check [the unit](http://x) & its logs."],
                "evidence": { "actions": { "refused": 6 }, "sample_clients": ["10.0.0.2"] },
                "first_seen": "2026-01-01T00:00:00.250Z", "last_seen": "2026-01-01T00:00:05Z",
                "count": 6, "clients": 1
            },
            "destination": { "ip": "10.0.0.1", "port": 8080 },
            "network": { "transport": "tcp", "type": "ipv4" },
            "observer": { "netns": 4026531840u32, "direction": "inbound" }
        });
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_slack_body_of_a_fixed_diagnosis() {
        let body = slack(&diagnosis(), "web-1", "observer why 8080");
        let expected = json!({
            "text": "observer on web-1: no_listener opened on port 8080: Nothing listens on port 8080 since &lt;!channel&gt; &amp; *web* (pid 7) stopped.",
            "blocks": [
                { "type": "header", "text": { "type": "plain_text", "text": "no_listener opened on web-1" } },
                { "type": "section", "text": { "type": "mrkdwn", "text": "Nothing listens on port 8080 since &lt;!channel&gt; &amp; *web* (pid 7) stopped." } },
                { "type": "section", "fields": [
                    { "type": "mrkdwn", "text": "*Host*\nweb-1" },
                    { "type": "mrkdwn", "text": "*Endpoint*\n10.0.0.1:8080 (inbound, netns 4026531840)" },
                    { "type": "mrkdwn", "text": "*Count*\n6" },
                    { "type": "mrkdwn", "text": "*Clients*\n1" },
                    { "type": "mrkdwn", "text": "*First seen*\n2026-01-01T00:00:00.250Z" },
                    { "type": "mrkdwn", "text": "*Last seen*\n2026-01-01T00:00:05Z" },
                ] },
                { "type": "section", "text": { "type": "mrkdwn", "text": "*What to do*\n• Start &lt;web&gt; again.\n• Check [the unit](http://x) &amp; its logs." } },
                { "type": "context", "elements": [{ "type": "mrkdwn", "text": "Diagnosis a41c0a3c2e8f1b77 · more: `observer why 8080` on web-1" }] },
            ],
        });
        assert_eq!(body, expected, "{body:#}");
    }

    #[test]
    fn the_teams_body_of_a_fixed_diagnosis() {
        let mut d = diagnosis();
        d.diagnosis.status = Status::Escalated;
        let body = teams(&d, "web-1", "observer why 8080 --netns 4026531840");
        let expected = json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "msteams": { "width": "Full" },
                    "fallbackText": "observer on web-1: no_listener escalated on port 8080: Nothing listens on port 8080 since <!channel> & *web* (pid 7) stopped.",
                    "body": [
                        { "type": "RichTextBlock", "inlines": [{ "type": "TextRun", "text": "no_listener escalated on web-1", "size": "Large", "weight": "Bolder", "color": "Attention" }] },
                        { "type": "RichTextBlock", "inlines": [{ "type": "TextRun", "text": "Nothing listens on port 8080 since <!channel> & *web* (pid 7) stopped." }] },
                        { "type": "FactSet", "facts": [
                            { "title": "Host", "value": "web-1" },
                            { "title": "Endpoint", "value": "10.0.0.1:8080 (inbound, netns 4026531840)" },
                            { "title": "Count", "value": "6" },
                            { "title": "Clients", "value": "1" },
                            { "title": "First seen", "value": "2026-01-01T00:00:00.250Z" },
                            { "title": "Last seen", "value": "2026-01-01T00:00:05Z" },
                        ] },
                        { "type": "TextBlock", "text": "What to do", "weight": "Bolder", "wrap": true },
                        { "type": "RichTextBlock", "inlines": [{ "type": "TextRun", "text": "• Start <web> again." }] },
                        { "type": "RichTextBlock", "inlines": [{ "type": "TextRun", "text": "• Check [the unit](http://x) & its logs." }] },
                        { "type": "RichTextBlock", "inlines": [
                            { "type": "TextRun", "text": "Diagnosis a41c0a3c2e8f1b77 · more: ", "isSubtle": true },
                            { "type": "TextRun", "text": "observer why 8080 --netns 4026531840", "fontType": "Monospace" },
                            { "type": "TextRun", "text": " on web-1", "isSubtle": true },
                        ] },
                    ],
                },
            }],
        });
        assert_eq!(body, expected, "{body:#}");
    }

    #[test]
    fn slack_text_stays_within_its_limits_and_is_never_cut_inside_an_escape() {
        assert_eq!(mrkdwn("a<b", 10), "a&lt;b");
        // "&lt;" does not fit after "a": cut before it.
        assert_eq!(mrkdwn("a<bcdef", 5), "a…");
        let mut d = diagnosis();
        d.diagnosis.summary = "<".repeat(5000);
        d.diagnosis.advice = vec!["&".repeat(2000), "x".repeat(2000)];
        let body = slack(&d, &"h".repeat(200), "observer why 8080");
        let blocks = body["blocks"].as_array().unwrap();
        let header = blocks[0]["text"]["text"].as_str().unwrap();
        assert_eq!(header.chars().count(), SLACK_HEADER_MAX);
        for b in &blocks[1..] {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= SLACK_SECTION_MAX, "{}", t.len());
                for (i, _) in t.match_indices('&') {
                    let rest = &t[i..];
                    assert!(["&amp;", "&lt;", "&gt;"].iter().any(|e| rest.starts_with(e)), "cut escape: {rest}");
                }
            }
            for f in b["fields"].as_array().into_iter().flatten() {
                assert!(f["text"].as_str().unwrap().chars().count() <= SLACK_FIELD_MAX);
            }
        }
    }

    #[test]
    fn summaries_are_messages_of_each_format() {
        let mut s = Suppressed::default();
        s.add(&diagnosis());
        s.add(&diagnosis());
        let slack = slack_summary(&s, "web<1>", 10);
        let text = slack["text"].as_str().unwrap();
        assert!(text.starts_with("observer on web&lt;1&gt;: 2 more alerts held back"), "{text}");
        assert!(text.ends_with(": no_listener 2"), "{text}");
        assert_eq!(slack["blocks"][0]["text"]["text"], text);
        let teams = teams_summary(&s, "web-1", 10);
        let run = &teams["attachments"][0]["content"]["body"][0]["inlines"][0]["text"];
        assert!(run.as_str().unwrap().starts_with("observer on web-1: 2 more alerts held back"), "{run}");
    }
}
