//! The JSON Schema of pipeline files, generated from the config structs and their doc
//! comments. `schemas/pipeline.schema.json` is this output; a test fails when it is stale.

use serde_json::{Map, Value, json};

use super::Header;
use crate::component::{Registry, StageKind};

/// The schema of pipelines made of the stage types in `types`, as pretty-printed JSON.
pub fn pipeline_schema(types: Registry) -> String {
    let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let header = serde_json::to_value(g.root_schema_for::<Header>()).unwrap_or_default();
    let mut defs = Map::new();
    let mut variants = Vec::new();
    for t in types.types() {
        let mut s = serde_json::to_value((t.schema)(&mut g)).unwrap_or_default();
        if let Some(Value::Object(d)) = s.as_object_mut().and_then(|o| o.remove("$defs")) {
            defs.extend(d);
        }
        if let Some(o) = s.as_object_mut() {
            o.remove("$schema");
            o.remove("title");
            let props = o
                .entry("properties")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            let mut all = Map::new();
            all.insert(
                "type".into(),
                json!({"const": t.name, "description": t.summary}),
            );
            if t.kind != StageKind::Source {
                all.insert(
                    "inputs".into(),
                    json!({"description": "The ids of the stages this one reads from.",
                        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}),
                );
            }
            all.extend(props);
            o.insert("properties".into(), Value::Object(all));
            let mut required = vec![json!("type")];
            if t.kind != StageKind::Source {
                required.push(json!("inputs"));
            }
            if let Some(Value::Array(r)) = o.get("required") {
                required.extend(r.iter().cloned());
            }
            o.insert("required".into(), Value::Array(required));
            o.insert("additionalProperties".into(), json!(false));
            o.insert("title".into(), json!(format!("{} stage", t.name)));
        }
        defs.insert(format!("stage_{}", t.name), s);
        variants.push(json!({
            "if": {"properties": {"type": {"const": t.name}}, "required": ["type"]},
            "then": {"$ref": format!("#/$defs/stage_{}", t.name)}
        }));
    }
    let mut root = header;
    if let Some(o) = root.as_object_mut() {
        if let Some(Value::Object(d)) = o.remove("$defs") {
            defs.extend(d);
        }
        o.insert("title".into(), json!("eventflow pipeline"));
        let type_names: Vec<&str> = types.names();
        let stage = json!({
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": type_names}},
            "allOf": variants
        });
        if let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "stages".into(),
                json!({
                    "description": "The stages, keyed by id ([a-z0-9_-]+). Sources have no inputs; every other stage names its inputs.",
                    "type": "object",
                    "propertyNames": {"pattern": "^[a-z0-9_-]+$"},
                    "additionalProperties": stage
                }),
            );
        }
        // A pipeline without stages is refused at load.
        let required = o.entry("required").or_insert_with(|| json!([]));
        if let Some(r) = required.as_array_mut() {
            r.push(json!("stages"));
        }
        o.insert("$defs".into(), Value::Object(defs));
    }
    serde_json::to_string_pretty(&root).unwrap_or_default() + "\n"
}
