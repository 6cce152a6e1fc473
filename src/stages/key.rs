//! Keys made of event fields, shared by `dedup`, `aggregate` and `rate_limit`.

use crate::event::{EventData, Field};

/// A list of event fields whose values, joined, identify a group of events.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec(pub Vec<Field>);

impl KeySpec {
    /// Writes the key of `e` into `buf` (cleared first). Values are separated by a byte that
    /// cannot appear in Kubernetes names (0x1f), so `a/b` + `c` and `a` + `b/c` differ.
    pub fn write(&self, e: &EventData, buf: &mut String) {
        self.write_with(e, buf, '\u{1f}');
    }

    /// Writes the values of `e` joined with `sep` into `buf` (cleared first).
    pub fn write_with(&self, e: &EventData, buf: &mut String, sep: char) {
        buf.clear();
        for (i, f) in self.0.iter().enumerate() {
            if i > 0 {
                buf.push(sep);
            }
            buf.push_str(&e.get(f));
        }
    }

    /// The values of `e` joined with `sep`, as a new string.
    pub fn joined(&self, e: &EventData, sep: char) -> String {
        let mut s = String::new();
        self.write_with(e, &mut s, sep);
        s
    }

    /// `key [namespace, reason] is `shop/BackOff``: for `eventflow explain`.
    pub fn describe(&self, e: &EventData) -> String {
        format!(
            "key [{}] is `{}`",
            self.0
                .iter()
                .map(Field::name)
                .collect::<Vec<_>>()
                .join(", "),
            self.joined(e, '/')
        )
    }

    /// The key in a readable form (for logs and summaries).
    pub fn display(&self, key: &str) -> String {
        key.replace('\u{1f}', "/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_over_several_fields_do_not_collide() {
        let k = KeySpec(vec![Field::Namespace, Field::ObjectName]);
        let a = EventData {
            namespace: "a/b".into(),
            object_name: "c".into(),
            ..EventData::default()
        };
        let b = EventData {
            namespace: "a".into(),
            object_name: "b/c".into(),
            ..EventData::default()
        };
        assert_ne!(k.joined(&a, '\u{1f}'), k.joined(&b, '\u{1f}'));
        assert_eq!(k.display(&k.joined(&a, '\u{1f}')), "a/b/c");
        assert_eq!(k.joined(&a, '/'), "a/b/c");
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn a_key_can_name_one_label_and_the_owner() {
        let f: Vec<Field> = serde_json::from_str(
            r#"["namespace_labels.team", "object_labels.app", "owner_kind", "owner_name"]"#,
        )
        .unwrap();
        let k = KeySpec(f);
        let e = EventData {
            namespace_labels: Some(std::sync::Arc::new(crate::event::Labels::from([(
                "team".into(),
                "payments".into(),
            )]))),
            owner_kind: "Deployment".into(),
            owner_name: "api".into(),
            ..EventData::default()
        };
        assert_eq!(k.joined(&e, '/'), "payments//Deployment/api");
        assert_eq!(
            k.describe(&e),
            "key [namespace_labels.team, object_labels.app, owner_kind, owner_name] is `payments//Deployment/api`"
        );
        let bad = serde_json::from_str::<Vec<Field>>(r#"["labels.team"]"#).unwrap_err();
        assert!(bad.to_string().contains("object_labels.KEY"), "{bad}");
        assert!(serde_json::from_str::<Vec<Field>>(r#"["object_labels."]"#).is_err());
    }
}
