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
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    out.push_str(user);
                    out.push_str(":***@");
                    out.push_str(host);
                }
                None => out.push_str(authority),
            }
            out.push_str(path);
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
    let mut out = String::with_capacity(text.len());
    let mut open: Option<char> = None;
    for c in text.chars() {
        match open {
            Some(q) if c == q => {
                out.push_str("***");
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if matches!(c, '"' | '\'' | '`') {
                    open = Some(c);
                }
            }
        }
    }
    if open.is_some() {
        out.push_str("***");
    }
    out
}

/// A parser's error about a file that holds secrets: its first line only (parsers print the
/// offending lines of the file below it), with quoted values hidden.
pub fn parse_error(text: &str) -> String {
    quoted(text.lines().next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

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
