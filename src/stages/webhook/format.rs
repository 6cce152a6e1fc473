//! Chat message formats: Slack, Microsoft Teams (Adaptive Card, for connectors and for
//! Workflows), DingTalk, Feishu, WeCom, Google Chat (a card, threaded by the problem's key),
//! Discord (an embed), Telegram (HTML) and Mattermost (Slack-compatible attachments).
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
    TeamsWorkflow,
    DingTalk,
    Feishu,
    WeCom,
    GoogleChat,
    Discord,
    Telegram,
    Mattermost,
}

impl Chat {
    /// The most bytes of message text the platform accepts (with room for the JSON around it).
    /// Platforms that count characters get their limit in bytes, which is never more.
    pub fn limit(self) -> usize {
        match self {
            Chat::WeCom => 4000,                         // markdown.content: 4096 bytes
            Chat::DingTalk => 19_000,                    // 20,000 bytes per message
            Chat::Feishu => 19_000,                      // about 20 KB per request body
            Chat::Slack => 38_000,                       // text: 40,000 characters
            Chat::Teams | Chat::TeamsWorkflow => 26_000, // 28 KB per message
            Chat::GoogleChat => 24_000,                  // 32,000 bytes per message
            Chat::Discord => 4000, // embed description: 4,096 characters (6,000 per message)
            Chat::Telegram => 4000, // text: 4,096 characters after entity parsing
            Chat::Mattermost => 15_000, // a post: 16,383 characters
        }
    }

    /// How the platform marks text up.
    fn markup(self) -> Markup {
        match self {
            Chat::Feishu => Markup::Plain,
            // Slack's mrkdwn: `*bold*`, and `&`, `<`, `>` escaped (else `<...>` is a link).
            Chat::Slack => Markup::SlackMrkdwn,
            // DingTalk, WeCom, Teams (Adaptive Card TextBlock) and Mattermost render
            // `**bold**`.
            Chat::DingTalk | Chat::WeCom | Chat::Teams | Chat::TeamsWorkflow | Chat::Mattermost => {
                Markup::Markdown
            }
            Chat::Discord => Markup::Discord,
            Chat::Telegram => Markup::Html,
            Chat::GoogleChat => Markup::HtmlBreaks,
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
    /// Discord's markdown: `**bold**`; markdown characters escaped with `\`.
    Discord,
    /// HTML (Telegram's `parse_mode: HTML`): `<b>bold</b>`; `&`, `<`, `>` escaped.
    Html,
    /// HTML with line breaks as `<br>` (Google Chat card text).
    HtmlBreaks,
}

impl Markup {
    fn bold(self) -> (&'static str, &'static str) {
        match self {
            Markup::Plain => ("", ""),
            Markup::Markdown | Markup::Discord => ("**", "**"),
            Markup::SlackMrkdwn => ("*", "*"),
            Markup::Html | Markup::HtmlBreaks => ("<b>", "</b>"),
        }
    }

    /// `text` as literal text in this markup.
    fn literal(self, text: &str) -> String {
        match self {
            Markup::SlackMrkdwn | Markup::Html | Markup::HtmlBreaks => text
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;"),
            Markup::Discord => {
                let mut out = String::with_capacity(text.len() + 8);
                for c in text.chars() {
                    if matches!(
                        c,
                        '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']'
                    ) {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out
            }
            Markup::Plain | Markup::Markdown => text.to_string(),
        }
    }

    fn is_html(self) -> bool {
        matches!(self, Markup::Html | Markup::HtmlBreaks)
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
    let (b, eb) = markup.bold();
    let lit = |t: &str| markup.literal(t);
    format!(
        "{b}[{ty}] {reason}{eb} {object} (x{count})\n{message}\ncluster: {cluster} · {time}",
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
    cut_in(s, max, Markup::Plain)
}

/// `s` in at most `max` bytes, `…` at the end when cut: never inside a multi-byte character,
/// and in HTML never inside an entity (`&amp;`) or a tag, with a bold tag left open closed.
fn cut_in(s: &str, max: usize, markup: Markup) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(8);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut kept = &s[..end];
    if markup.is_html() {
        if let Some(amp) = kept.rfind('&')
            && !kept[amp..].contains(';')
        {
            kept = &kept[..amp];
        }
        if let Some(lt) = kept.rfind('<')
            && !kept[lt..].contains('>')
        {
            kept = &kept[..lt];
        }
    }
    if markup == Markup::Discord {
        // A trailing lone `\\` would escape the ellipsis.
        let trailing = kept.len() - kept.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            kept = &kept[..kept.len() - 1];
        }
    }
    let mut out = format!("{kept}…");
    if markup.is_html() && kept.matches("<b>").count() > kept.matches("</b>").count() {
        out.push_str("</b>");
    }
    out
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
                text = cut_in(&part, limit - note_room, md);
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

/// What some formats need besides the events.
pub struct Extra<'a> {
    /// DingTalk's and Feishu's signing secret.
    pub secret: Option<&'a str>,
    /// Telegram's chat.
    pub chat_id: Option<&'a str>,
    /// The time signatures carry.
    pub now_ms: i64,
}

/// The key repeats of one problem share (Google Chat threads by it):
/// `cluster/namespace/kind/object/reason`.
pub fn problem_key(e: &EventData) -> String {
    format!(
        "{}/{}/{}/{}/{}",
        e.cluster, e.namespace, e.kind, e.object_name, e.reason
    )
}

/// Discord's embed colour: orange when any event is a Warning, green for Normal, else grey.
fn colour(events: &[Event]) -> u32 {
    if events.iter().any(|e| e.type_ == "Warning") {
        0x00E6_7E22
    } else if events.iter().all(|e| e.type_ == "Normal") {
        0x002E_CC71
    } else {
        0x0095_A5A6
    }
}

/// An Adaptive Card 1.4 in the `attachments` envelope both Teams connectors and Workflows take.
fn adaptive_card(title: &str, text: &str, facts: Option<Value>, workflow: bool) -> Value {
    let mut body = vec![
        json!({"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": true}),
        json!({"type": "TextBlock", "text": text, "wrap": true}),
    ];
    if let Some(f) = facts {
        body.push(f);
    }
    let mut attachment = json!({
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
        }
    });
    if workflow {
        // The Workflows template reads `contentUrl` (null: the card is inline).
        attachment["contentUrl"] = Value::Null;
    }
    json!({"type": "message", "attachments": [attachment]})
}

/// The request body for `chat`.
pub fn body(events: &[Event], chat: Chat, extra: &Extra<'_>) -> Value {
    let (title, text) = batch_text(events, chat);
    match chat {
        Chat::Slack => json!({"text": text}),
        Chat::Teams => adaptive_card(&title, &text, None, false),
        Chat::TeamsWorkflow => {
            let facts = events.first().map(|e| {
                let fact = |t: &str, v: String| json!({"title": t, "value": v});
                json!({"type": "FactSet", "facts": [
                    fact("Cluster", e.cluster.to_string()),
                    fact("Object", object_path(e)),
                    fact("Reason", e.reason.clone()),
                    fact("Type", e.type_.clone()),
                    fact("Count", e.count.to_string()),
                    fact("Events", events.len().to_string()),
                ]})
            });
            adaptive_card(&title, &text, facts, true)
        }
        Chat::DingTalk => {
            json!({"msgtype": "markdown", "markdown": {"title": title, "text": text}})
        }
        Chat::WeCom => json!({"msgtype": "markdown", "markdown": {"content": text}}),
        Chat::Feishu => {
            let mut b = json!({"msg_type": "text", "content": {"text": text}});
            if let Some(s) = extra.secret {
                let ts = extra.now_ms / 1000;
                b["timestamp"] = json!(ts.to_string());
                b["sign"] = json!(feishu_sign(s, ts));
            }
            b
        }
        Chat::GoogleChat => json!({
            "cardsV2": [{
                "cardId": "eventflow",
                "card": {
                    "header": {"title": cut(&title, 200), "subtitle": events.first().map(|e| e.cluster.to_string()).unwrap_or_default()},
                    "sections": [{"widgets": [{"textParagraph": {"text": text.replace('\n', "<br>")}}]}],
                },
            }],
            "thread": {"threadKey": events.first().map(|e| problem_key(e)).unwrap_or_default()},
        }),
        Chat::Discord => json!({
            "embeds": [{
                "title": cut(&title, 250),
                "description": text,
                "color": colour(events),
            }],
            "allowed_mentions": {"parse": []},
        }),
        Chat::Telegram => json!({
            "chat_id": extra.chat_id.unwrap_or_default(),
            "text": text,
            "parse_mode": "HTML",
            "disable_web_page_preview": true,
        }),
        Chat::Mattermost => json!({
            "text": cut(&title, 1000),
            "attachments": [{
                "fallback": cut(&title, 1000),
                "color": format!("#{:06X}", colour(events)),
                "title": cut(&title, 1000),
                "text": text,
            }],
        }),
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
        Chat::Telegram => {
            if v.get("ok")?.as_bool()? {
                return None;
            }
            (v.get("error_code")?.as_i64()?, v.get("description"))
        }
        Chat::Slack
        | Chat::Teams
        | Chat::TeamsWorkflow
        | Chat::GoogleChat
        | Chat::Discord
        | Chat::Mattermost => return None,
    };
    if code == 0 {
        return None;
    }
    let retry = match chat {
        Chat::DingTalk => code == 130_101,           // sending too fast
        Chat::WeCom => code == 45_009 || code == -1, // frequency limit, system busy
        Chat::Feishu => code == 9_499 || code == 11_232, // too many requests
        Chat::Telegram => code == 429,
        _ => false,
    };
    let msg = msg.and_then(Value::as_str).unwrap_or_default();
    Some((retry, format!("error code {code}: {msg}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Extra<'static> = Extra {
        secret: None,
        chat_id: None,
        now_ms: 0,
    };
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
        let text = body(std::slice::from_ref(&node), Chat::Slack, &NONE)["text"]
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
        let wecom = body(std::slice::from_ref(&e), Chat::WeCom, &NONE).to_string();
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
            body(&e, Chat::Slack, &NONE),
            json!({"text": text.replace("**", "*")}),
            "Slack's mrkdwn bolds with one asterisk"
        );
        assert_eq!(
            body(&e, Chat::WeCom, &NONE),
            json!({"msgtype": "markdown", "markdown": {"content": text}})
        );
        assert_eq!(
            body(&e, Chat::DingTalk, &NONE),
            json!({"msgtype": "markdown", "markdown": {"title": "[Warning] BackOff shop/web-0", "text": text}})
        );
        assert_eq!(
            body(
                &e,
                Chat::Feishu,
                &Extra {
                    secret: Some("s3cr3t"),
                    chat_id: None,
                    now_ms: 1_700_000_000_000
                }
            ),
            json!({"msg_type": "text", "content": {"text": "[Warning] BackOff shop/Pod/web-0 (x3)\nBack-off restarting \"web\"\ncluster: prod · 2024-05-01 10:09:42 UTC"},
                   "timestamp": "1700000000", "sign": feishu_sign("s3cr3t", 1_700_000_000)})
        );
        let teams = body(&e, Chat::Teams, &NONE);
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
