//! Chat message formats: Slack, Microsoft Teams (Adaptive Card), DingTalk, Feishu and WeCom.
//! Each renders a readable message for one or more events (cluster, namespace/object, reason,
//! type, count, message, time), within the platform's size limit: events that do not fit are
//! left out with a note saying how many, and an over-long message is cut with `…`.
//! Signing (DingTalk, Feishu) follows each platform's documentation.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::event::{Event, EventData};

/// A chat platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chat {
    Slack,
    Teams,
    DingTalk,
    Feishu,
    WeCom,
}

impl Chat {
    /// The most bytes of message text the platform accepts (with room for the JSON around it).
    pub fn limit(self) -> usize {
        match self {
            Chat::WeCom => 4000,      // markdown.content: 4096 bytes
            Chat::DingTalk => 19_000, // 20,000 bytes per message
            Chat::Feishu => 19_000,   // about 20 KB per request body
            Chat::Slack => 38_000,    // text: 40,000 characters
            Chat::Teams => 26_000,    // 28 KB per message
        }
    }

    /// How the platform marks text up.
    fn markup(self) -> Markup {
        match self {
            Chat::Feishu => Markup::Plain,
            // Slack's mrkdwn: `*bold*`, and `&`, `<`, `>` escaped (else `<...>` is a link).
            Chat::Slack => Markup::SlackMrkdwn,
            // DingTalk, WeCom and Teams (Adaptive Card TextBlock) render `**bold**`.
            Chat::DingTalk | Chat::WeCom | Chat::Teams => Markup::Markdown,
        }
    }
}

/// A platform's text markup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markup {
    Plain,
    /// `**bold**`.
    Markdown,
    /// Slack's mrkdwn: `*bold*`; `&`, `<`, `>` escaped.
    SlackMrkdwn,
}

impl Markup {
    fn bold(self) -> &'static str {
        match self {
            Markup::Plain => "",
            Markup::Markdown => "**",
            Markup::SlackMrkdwn => "*",
        }
    }

    /// `text` as literal text in this markup.
    fn literal(self, text: &str) -> String {
        match self {
            Markup::SlackMrkdwn => text
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
            Markup::Plain | Markup::Markdown => text.to_string(),
        }
    }
}

/// Where the event's object is: `namespace/Kind/name`, or `Kind/name` for a cluster-scoped one.
fn object_path(e: &EventData) -> String {
    let object = if e.object_name.is_empty() {
        e.name.clone()
    } else {
        format!("{}/{}", e.kind, e.object_name)
    };
    if e.namespace.is_empty() {
        object
    } else {
        format!("{}/{object}", e.namespace)
    }
}

fn time(e: &EventData) -> String {
    e.last_seen
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// One event as a few lines of text, marked up as the platform renders it.
pub fn event_text(e: &EventData, markup: Markup) -> String {
    let b = markup.bold();
    let lit = |t: &str| markup.literal(t);
    format!(
        "{b}[{ty}] {reason}{b} {object} (x{count})\n{message}\ncluster: {cluster} · {time}",
        ty = lit(&e.type_),
        reason = lit(&e.reason),
        object = lit(&object_path(e)),
        count = e.count,
        message = lit(&e.message),
        cluster = lit(&e.cluster),
        time = time(e),
    )
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The message text for a batch, within `limit` bytes.
pub fn batch_text(events: &[Event], chat: Chat) -> (String, String) {
    let md = chat.markup();
    let title = match events {
        [one] if one.namespace.is_empty() => {
            format!("[{}] {} {}", one.type_, one.reason, one.object_name)
        }
        [one] => format!(
            "[{}] {} {}/{}",
            one.type_, one.reason, one.namespace, one.object_name
        ),
        many => format!("{} Kubernetes events", many.len()),
    };
    let limit = chat.limit();
    let sep = "\n\n";
    let mut text = String::new();
    for (i, e) in events.iter().enumerate() {
        let part = event_text(e, md);
        let note_room = 64;
        if text.len() + sep.len() + part.len() + note_room > limit {
            if text.is_empty() {
                text = cut(&part, limit - note_room);
                if events.len() > 1 {
                    text.push_str(&format!(
                        "{sep}…and {} more events not shown",
                        events.len() - 1
                    ));
                }
            } else {
                text.push_str(&format!(
                    "{sep}…and {} more events not shown",
                    events.len() - i
                ));
            }
            return (title, text);
        }
        if !text.is_empty() {
            text.push_str(sep);
        }
        text.push_str(&part);
    }
    (title, text)
}

/// The request body for `chat`. `now_ms` and `secret` drive signing (Feishu signs in the body).
pub fn body(events: &[Event], chat: Chat, secret: Option<&str>, now_ms: i64) -> Value {
    let (title, text) = batch_text(events, chat);
    match chat {
        Chat::Slack => json!({"text": text}),
        Chat::Teams => json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": [
                        {"type": "TextBlock", "text": title, "weight": "Bolder", "wrap": true},
                        {"type": "TextBlock", "text": text, "wrap": true}
                    ]
                }
            }]
        }),
        Chat::DingTalk => {
            json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}})
        }
        Chat::WeCom => json!({"msgtype": "markdown", "markdown": {"content": text}}),
        Chat::Feishu => {
            let mut b = json!({"msg_type": "text", "content": {"text": text}});
            if let Some(s) = secret {
                let ts = now_ms / 1000;
                b["timestamp"] = json!(ts.to_string());
                b["sign"] = json!(feishu_sign(s, ts));
            }
            b
        }
    }
}

/// DingTalk: `sign = urlencode(base64(HmacSHA256(key = secret, msg = timestamp_ms + "\n" + secret)))`,
/// sent as the query parameters `timestamp` and `sign`.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let msg = format!("{timestamp_ms}\n{secret}");
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Feishu: `sign = base64(HmacSHA256(key = timestamp_s + "\n" + secret, msg = ""))`, sent in the
/// body with `timestamp`.
pub fn feishu_sign(secret: &str, timestamp_s: i64) -> String {
    let key = format!("{timestamp_s}\n{secret}");
    let Ok(mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What a chat platform's answer body says: `None` = accepted, `Some(true)` = retry (rate
/// limited), `Some(false)` = refused for good. The platforms answer HTTP 200 with an error code.
pub fn answer_error(chat: Chat, body: &str) -> Option<(bool, String)> {
    let v: Value = serde_json::from_str(body).ok()?;
    let (code, msg) = match chat {
        Chat::DingTalk | Chat::WeCom => (v.get("errcode")?.as_i64()?, v.get("errmsg")),
        Chat::Feishu => (
            v.get("code").or_else(|| v.get("StatusCode"))?.as_i64()?,
            v.get("msg").or_else(|| v.get("StatusMessage")),
        ),
        Chat::Slack | Chat::Teams => return None,
    };
    if code == 0 {
        return None;
    }
    let retry = match chat {
        Chat::DingTalk => code == 130_101,           // sending too fast
        Chat::WeCom => code == 45_009 || code == -1, // frequency limit, system busy
        Chat::Feishu => code == 9_499 || code == 11_232, // too many requests
        _ => false,
    };
    let msg = msg.and_then(Value::as_str).unwrap_or_default();
    Some((retry, format!("error code {code}: {msg}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventData, Finalizers};
    use std::sync::Arc;

    fn ev(i: usize, msg: &str) -> Event {
        Event::new(
            EventData {
                cluster: Arc::from("prod"),
                uid: format!("u{i}"),
                name: format!("web-{i}.17d2"),
                namespace: "shop".into(),
                type_: "Warning".into(),
                reason: "BackOff".into(),
                message: msg.into(),
                kind: "Pod".into(),
                object_name: format!("web-{i}"),
                count: 3,
                last_seen: chrono::DateTime::parse_from_rfc3339("2024-05-01T10:09:42Z")
                    .ok()
                    .map(|t| t.with_timezone(&chrono::Utc)),
                ..EventData::default()
            },
            Finalizers::None,
        )
    }

    #[test]
    fn slack_text_is_escaped_and_cluster_scoped_objects_have_no_leading_slash() {
        let mut e = ev(0, "probe failed: <html> & more");
        let node = Event::new(
            EventData {
                namespace: String::new(),
                kind: "Node".into(),
                object_name: "worker-3".into(),
                ..e.data().clone()
            },
            Finalizers::None,
        );
        let text = body(std::slice::from_ref(&node), Chat::Slack, None, 0)["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            text.starts_with("*[Warning] BackOff* Node/worker-3 (x3)"),
            "{text}"
        );
        assert!(
            text.contains("probe failed: &lt;html&gt; &amp; more"),
            "{text}"
        );
        let (title, _) = batch_text(std::slice::from_ref(&node), Chat::DingTalk);
        assert_eq!(title, "[Warning] BackOff worker-3");
        e = ev(0, "<b>");
        let wecom = body(std::slice::from_ref(&e), Chat::WeCom, None, 0).to_string();
        assert!(
            wecom.contains("<b>"),
            "markdown platforms get the text as it is"
        );
    }

    #[test]
    fn golden_bodies() {
        let e = [ev(0, "Back-off restarting \"web\"")];
        let text = "**[Warning] BackOff** shop/Pod/web-0 (x3)\nBack-off restarting \"web\"\ncluster: prod · 2024-05-01 10:09:42 UTC";
        assert_eq!(
            body(&e, Chat::Slack, None, 0),
            json!({"text": text.replace("**", "*")}),
            "Slack's mrkdwn bolds with one asterisk"
        );
        assert_eq!(
            body(&e, Chat::WeCom, None, 0),
            json!({"msgtype": "markdown", "markdown": {"content": text}})
        );
        assert_eq!(
            body(&e, Chat::DingTalk, None, 0),
            json!({"msgtype": "markdown", "markdown": {"title": "[Warning] BackOff shop/web-0", "text": text}})
        );
        assert_eq!(
            body(&e, Chat::Feishu, Some("s3cr3t"), 1_700_000_000_000),
            json!({"msg_type": "text", "content": {"text": "[Warning] BackOff shop/Pod/web-0 (x3)\nBack-off restarting \"web\"\ncluster: prod · 2024-05-01 10:09:42 UTC"},
                   "timestamp": "1700000000", "sign": feishu_sign("s3cr3t", 1_700_000_000)})
        );
        let teams = body(&e, Chat::Teams, None, 0);
        assert_eq!(teams["attachments"][0]["content"]["type"], "AdaptiveCard");
        assert_eq!(teams["attachments"][0]["content"]["body"][1]["text"], text);
    }

    #[test]
    fn signatures_match_the_documented_algorithms() {
        // Expected values computed independently (Python's hmac/hashlib/base64) from the
        // algorithms in the DingTalk and Feishu documentation.
        assert_eq!(
            dingtalk_sign("SECabc123", 1_700_000_000_000),
            "N5P09a4+p1AMJIJWnIvQd2Yxw9+fu/oEBnPrjCcsLXk="
        );
        assert_eq!(
            feishu_sign("abc123", 1_700_000_000),
            "J0suvZQ7pBIXibHw5hyQvuZiXVa3ct5lilLN472FoLk="
        );
    }

    #[test]
    fn size_limits_leave_events_out_with_a_note() {
        let events: Vec<Event> = (0..200).map(|i| ev(i, &"x".repeat(100))).collect();
        let (_, text) = batch_text(&events, Chat::WeCom);
        assert!(text.len() <= Chat::WeCom.limit(), "{}", text.len());
        assert!(text.ends_with("more events not shown"), "{text}");
        let huge = [ev(0, &"é".repeat(10_000))];
        let (_, text) = batch_text(&huge, Chat::WeCom);
        assert!(text.len() <= Chat::WeCom.limit());
        assert!(text.ends_with('…'));
    }

    #[test]
    fn chat_error_codes() {
        assert_eq!(
            answer_error(Chat::DingTalk, r#"{"errcode":0,"errmsg":"ok"}"#),
            None
        );
        assert_eq!(
            answer_error(
                Chat::DingTalk,
                r#"{"errcode":130101,"errmsg":"send too fast"}"#
            )
            .map(|x| x.0),
            Some(true)
        );
        assert_eq!(
            answer_error(
                Chat::DingTalk,
                r#"{"errcode":310000,"errmsg":"sign not match"}"#
            )
            .map(|x| x.0),
            Some(false)
        );
        assert_eq!(
            answer_error(Chat::WeCom, r#"{"errcode":45009,"errmsg":"freq"}"#).map(|x| x.0),
            Some(true)
        );
        assert_eq!(
            answer_error(Chat::Feishu, r#"{"code":19021,"msg":"sign match fail"}"#).map(|x| x.0),
            Some(false)
        );
        assert_eq!(
            answer_error(
                Chat::Feishu,
                r#"{"StatusCode":0,"StatusMessage":"success"}"#
            ),
            None
        );
    }
}
