//! Secrets out of messages: URLs as they may be logged, stored in a reason or printed.
//!
//! Webhook URLs carry tokens in their query (`?access_token=...`, a Slack or WeCom key in the
//! path is the exception users know to guard), database URLs carry passwords in their
//! userinfo and sometimes in the query (`?password=`). Everything that shows a URL to a person
//! goes through [`url`]; only the request itself uses the real one.

/// `url` with the password of its userinfo and every query value replaced by `***`:
/// `https://u:pw@h/p?access_token=abc&x=1` -> `https://u:***@h/p?access_token=***&x=***`.
/// Text that is not a URL comes back with the same treatment of whatever looks like userinfo
/// and a query, so a malformed URL does not leak either.
pub fn url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let (head, fragment) = match (query, head.split_once('#')) {
        (None, Some((h, f))) => (h, Some(f)),
        _ => (head, None),
    };
    let mut out = String::with_capacity(url.len());
    match head.split_once("://") {
        Some((scheme, rest)) => {
            out.push_str(scheme);
            out.push_str("://");
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = if let Some((userinfo, host)) = authority.rsplit_once('@') {
                let user = userinfo.split(':').next().unwrap_or("");
                out.push_str(user);
                out.push_str(":***@");
                out.push_str(host);
                host
            } else {
                out.push_str(authority);
                authority
            };
            out.push_str(&path_without_secrets(host, path));
        }
        None => out.push_str(head),
    }
    if let Some(q) = query {
        out.push('?');
        let q = q.split('#').next().unwrap_or("");
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None if kv.is_empty() => String::new(),
                None => "***".to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    if fragment.is_some() {
        out.push_str("#***");
    }
    out
}

/// Chat webhooks whose secret is part of the path, by host: how many path segments are
/// public (the rest is the key). Slack `/services/T…/B…/<secret>`, Discord
/// `/api/webhooks/<id>/<token>`, Feishu and Lark `/open-apis/bot/v2/hook/<token>`, the retired
/// Office 365 connectors `/webhookb2/<ids>/IncomingWebhook/<key>/<id>`.
const PATH_SECRETS: [(&str, usize); 6] = [
    ("hooks.slack.com", 3),
    ("discord.com", 3),
    ("discordapp.com", 3),
    ("open.feishu.cn", 4),
    ("open.larksuite.com", 4),
    (".webhook.office.com", 1),
];

/// `path` with the segments that hold a chat webhook's key replaced by `***`, for the hosts
/// known to carry one there.
fn path_without_secrets(host: &str, path: &str) -> String {
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let Some((_, public)) = PATH_SECRETS
        .iter()
        .find(|(h, _)| host == *h || (h.starts_with('.') && host.ends_with(h)))
    else {
        return path.to_string();
    };
    let segments: Vec<&str> = path.split('/').collect();
    // The first element is the empty text before the leading `/`.
    segments
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            if i > *public && !seg.is_empty() {
                "***"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Replaces every occurrence of each URL in `urls` inside `text` by its redacted form (for
/// error messages from libraries that print the URL they were given).
pub fn in_text(text: &str, urls: &[&str]) -> String {
    let mut out = text.to_string();
    for u in urls {
        if !u.is_empty() && out.contains(u) {
            out = out.replace(u, &url(u));
        }
    }
    out
}

/// `text` with every quoted part (`"..."`, `'...'`, `` `...` ``) replaced by `***`: for
/// parser errors about files that hold secrets (a kubeconfig's token), which quote the values
/// they could not read.
pub fn quoted(text: &str) -> String {
    quoted_keeping(text, &[])
}

/// A parser's error about a file that holds secrets: its first line only (parsers print the
/// offending lines of the file below it), with quoted values hidden.
pub fn parse_error(text: &str) -> String {
    quoted(text.lines().next().unwrap_or(""))
}

/// [`parse_error`], but a quoted value that is one of `paths` stays as it is: a path is not a
/// secret, and the user needs to see which file could not be read.
pub fn parse_error_keeping(text: &str, paths: &[&str]) -> String {
    quoted_keeping(text.lines().next().unwrap_or(""), paths)
}

/// [`quoted`], keeping the quoted values that are in `keep`.
fn quoted_keeping(text: &str, keep: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut open: Option<(char, String)> = None;
    for c in text.chars() {
        match &mut open {
            Some((q, inside)) if c == *q => {
                // Libraries quote a path as its Debug form inside quotes: '"/etc/kc"'.
                let bare = inside.trim_matches('"');
                if keep
                    .iter()
                    .any(|k| !k.is_empty() && (k == inside || *k == bare))
                {
                    out.push_str(inside);
                } else {
                    out.push_str("***");
                }
                out.push(c);
                open = None;
            }
            Some((_, inside)) => inside.push(c),
            None => {
                out.push(c);
                if matches!(c, '"' | '\'' | '`') {
                    open = Some((c, String::new()));
                }
            }
        }
    }
    if open.is_some() {
        out.push_str("***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_webhook_keys_in_the_path_are_hidden() {
        assert_eq!(
            url("https://hooks.slack.com/services/T0123/B0456/XyZsecret789"),
            "https://hooks.slack.com/services/T0123/B0456/***"
        );
        assert_eq!(
            url("https://discord.com/api/webhooks/123456/tok-en_secret"),
            "https://discord.com/api/webhooks/123456/***"
        );
        assert_eq!(
            url("https://open.feishu.cn/open-apis/bot/v2/hook/0f1e2d3c"),
            "https://open.feishu.cn/open-apis/bot/v2/hook/***"
        );
        assert_eq!(
            url("https://contoso.webhook.office.com/webhookb2/a-b@c/IncomingWebhook/k3y/d"),
            "https://contoso.webhook.office.com/webhookb2/***/***/***/***"
        );
        assert_eq!(
            url(
                "https://prod.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=1&sig=s3cr3t"
            ),
            "https://prod.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=***&sig=***"
        );
        // Other hosts keep their paths.
        assert_eq!(
            url("https://example.com/hooks/abc"),
            "https://example.com/hooks/abc"
        );
    }

    #[test]
    fn a_path_is_not_a_secret() {
        assert_eq!(
            parse_error_keeping(
                "failed to read kubeconfig from '/etc/kube/config': No such file or directory",
                &["/etc/kube/config"]
            ),
            "failed to read kubeconfig from '/etc/kube/config': No such file or directory"
        );
        assert_eq!(
            parse_error_keeping("failed to read kubeconfig from '\"/k c\"': nope", &["/k c"]),
            "failed to read kubeconfig from '\"/k c\"': nope"
        );
        assert_eq!(
            parse_error_keeping("invalid token \"abc.def\" in '/k'", &["/k"]),
            "invalid token \"***\" in '/k'"
        );
    }

    #[test]
    fn hides_quoted_values() {
        assert_eq!(
            quoted("invalid type: string \"tok-123\", expected a map at line 3"),
            "invalid type: string \"***\", expected a map at line 3"
        );
        assert_eq!(quoted("unterminated 'abc"), "unterminated '***");
    }

    #[test]
    fn hides_passwords_and_query_values() {
        assert_eq!(
            url("postgres://u:secret@h:5432/db?sslmode=require&password=pw"),
            "postgres://u:***@h:5432/db?sslmode=***&password=***"
        );
        assert_eq!(
            url("https://oapi.dingtalk.com/robot/send?access_token=abc123"),
            "https://oapi.dingtalk.com/robot/send?access_token=***"
        );
        assert_eq!(url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(url("http://h/p#tok"), "http://h/p#***");
        assert_eq!(url("mysql://root@h/db"), "mysql://root:***@h/db");
        assert_eq!(url("not a url?token"), "not a url?***");
        assert_eq!(
            in_text(
                "error sending request for url (http://h/x?k=s3cr3t)",
                &["http://h/x?k=s3cr3t"]
            ),
            "error sending request for url (http://h/x?k=***)"
        );
    }
}
