//! Strict reading of a `BalancerPool` document: every field is checked against the JSON schema
//! the CRD is generated from, before the document is turned into the Rust types.
//!
//! Serde drops fields it does not know, so a typo (`stiky:`, `lbMetod:`, a member's
//! `loadFactr:`) would load quietly and turn a feature off. The API server refuses such fields
//! for the CRD; a standalone file gets the same treatment here, with the path of each problem and,
//! when a known name is close, the one meant (`spec.stiky: unknown field, did you mean
//! spec.sticky?`). Walking the schema rather than marking every struct `deny_unknown_fields`
//! keeps the api types as they are and reports every problem of a document in one pass: a bad
//! enum value no longer hides the field checks behind it.
//!
//! A value that breaks the schema is removed from the document (a field of an object) so that
//! the rest can still be read and validated; a bad array element cannot be removed without
//! renumbering its siblings, so it marks the document as unreadable instead.

use std::sync::LazyLock;

use serde_json::{Map, Value};

/// The fields of a Kubernetes object (the CRD schema describes `spec` and `status` only).
const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// The fields Kubernetes defines for `metadata` (the CRD schema leaves it open).
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

/// Values the schema does not list that the Rust types still read, kept for old files:
/// `sticky.cookie.secure` was a boolean before it took `Auto` / `Always` / `Never`.
const LEGACY_BOOLEANS: &[&str] = &["spec.sticky.cookie.secure"];

/// Closest similarity (Jaro-Winkler) at which a known name is offered as the one meant.
const SUGGEST_AT: f64 = 0.8;

/// The result of checking one document.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per problem: `spec.stiky: unknown field, did you mean spec.sticky?`.
    pub problems: Vec<String>,
    /// A problem was left in the document (a bad array element): it cannot be read into the
    /// api types without reporting the same problem again.
    pub unreadable: bool,
}

/// The `openAPIV3Schema` of the BalancerPool CRD, as JSON, built once.
static SCHEMA: LazyLock<Result<Value, String>> = LazyLock::new(|| {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(crate::api::BalancerPool::crd()).map_err(|e| e.to_string())?;
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
        .ok_or_else(|| "the CRD has no openAPIV3Schema".to_owned())
});

/// The BalancerPool schema (for tests and documentation checks that list its fields).
pub fn schema() -> Result<&'static Value, String> {
    SCHEMA.as_ref().map_err(Clone::clone)
}

/// Checks a BalancerPool document against the schema, removing what breaks it (see the module
/// documentation) so the rest can still be validated.
pub fn check_pool(doc: &mut Value) -> Report {
    let mut report = Report::default();
    let schema = match schema() {
        Ok(s) => s,
        Err(e) => {
            report.problems.push(format!("cannot check fields: {e}"));
            return report;
        }
    };
    let Some(top) = doc.as_object_mut() else {
        report.problems.push("is not a map of fields".to_owned());
        report.unreadable = true;
        return report;
    };
    unknown_fields(top, "", TOP_FIELDS, &mut report);
    if let Some(meta) = top.get_mut("metadata").and_then(Value::as_object_mut) {
        unknown_fields(meta, "metadata", OBJECT_META_FIELDS, &mut report);
    }
    let props = schema.get("properties");
    for field in ["spec", "status"] {
        if let (Some(s), Some(v)) = (props.and_then(|p| p.get(field)), top.get_mut(field))
            && !walk(s, v, field, &mut report)
        {
            top.remove(field);
        }
    }
    if !top.contains_key("spec") {
        report.problems.push("spec: is required".to_owned());
        report.unreadable = true;
    }
    report
}

/// Checks `value` against `schema`; false when the value must go (the problem is reported).
fn walk(schema: &Value, value: &mut Value, path: &str, report: &mut Report) -> bool {
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            return true;
        }
        report.problems.push(format!("{path}: must not be empty (null)"));
        return false;
    }
    scalar_as_string(schema, value, path);
    if let Err(reason) = type_matches(schema, value, path) {
        report.problems.push(format!("{path}: {reason}"));
        return false;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
        && !(value.is_boolean() && LEGACY_BOOLEANS.contains(&path))
    {
        report.problems.push(format!("{path}: {}", enum_problem(allowed, value)));
        return false;
    }
    match value {
        Value::Object(map) => walk_object(schema, map, path, report),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    if !walk(item_schema, item, &format!("{path}[{i}]"), report) {
                        report.unreadable = true;
                    }
                }
            }
        }
        _ => {}
    }
    true
}

/// The fields of an object: known ones are checked, unknown ones reported and removed, missing
/// required ones reported.
fn walk_object(schema: &Value, map: &mut Map<String, Value>, path: &str, report: &mut Report) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        if let Some(extra) = schema.get("additionalProperties").filter(|s| s.is_object()) {
            map.retain(|k, v| walk(extra, v, &join(path, k), report));
        }
        return;
    };
    let known: Vec<&str> = props.keys().map(String::as_str).collect();
    unknown_fields(map, path, &known, report);
    map.retain(|k, v| props.get(k).is_none_or(|s| walk(s, v, &join(path, k), report)));
    for req in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
        if !map.contains_key(req) {
            report.problems.push(format!("{}: is required", join(path, req)));
            report.unreadable = true;
        }
    }
}

/// Reports and removes the fields of `map` that are not in `known`.
fn unknown_fields(map: &mut Map<String, Value>, path: &str, known: &[&str], report: &mut Report) {
    map.retain(|k, _| {
        if known.contains(&k.as_str()) {
            return true;
        }
        let problem = match closest(k, known.iter().copied()) {
            Some(meant) => format!("{}: unknown field, did you mean {}?", join(path, k), join(path, meant)),
            None => format!("{}: unknown field ({} takes {})", join(path, k), or_top(path), known.join(", ")),
        };
        report.problems.push(problem);
        false
    });
}

/// A plain YAML scalar where the schema wants a string (`route: 1`, `expectStatus: 200`) is
/// read as its text, as YAML readers do for string fields.
fn scalar_as_string(schema: &Value, value: &mut Value, path: &str) {
    if schema.get("type").and_then(Value::as_str) != Some("string") || LEGACY_BOOLEANS.contains(&path) {
        return;
    }
    match value {
        Value::Number(n) => *value = Value::String(n.to_string()),
        Value::Bool(b) => *value = Value::String(b.to_string()),
        _ => {}
    }
}

/// Whether `value` has the schema's `type` (integers also fit their `format`).
fn type_matches(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    if schema.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        return match value {
            Value::String(_) => Ok(()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(()),
            other => Err(format!("invalid type: {}, expected a name or a number", describe(other))),
        };
    }
    let Some(ty) = schema.get("type").and_then(Value::as_str) else { return Ok(()) };
    let fits = match (ty, value) {
        ("object", Value::Object(_))
        | ("array", Value::Array(_))
        | ("string", Value::String(_))
        | ("boolean", Value::Bool(_))
        | ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => {
            return integer_fits(schema.get("format").and_then(Value::as_str), n)
                .map_err(|range| format!("{n} is out of range ({range})"));
        }
        ("string", Value::Bool(_)) => LEGACY_BOOLEANS.contains(&path),
        _ => false,
    };
    if fits { Ok(()) } else { Err(format!("invalid type: {}, expected {}", describe(value), article(ty))) }
}

/// Whether an integer fits the Rust type behind the schema's `format`.
fn integer_fits(format: Option<&str>, n: &serde_json::Number) -> Result<(), &'static str> {
    let (ok, range) = match format {
        Some("uint16") => (n.as_u64().is_some_and(|v| v <= u64::from(u16::MAX)), "0–65535"),
        Some("uint32") => (n.as_u64().is_some_and(|v| v <= u64::from(u32::MAX)), "0–4294967295"),
        Some("uint64") => (n.as_u64().is_some(), "0 or more"),
        _ => (n.is_i64() || n.is_u64(), "a whole number"),
    };
    if ok { Ok(()) } else { Err(range) }
}

/// `"X" is not one of A, B, C; did you mean B?`
fn enum_problem(allowed: &[Value], value: &Value) -> String {
    let names: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
    let mut text = format!("{value} is not one of {}", names.join(", "));
    if let Some(meant) = value.as_str().and_then(|v| closest(v, names.iter().copied())) {
        text.push_str(&format!("; did you mean {meant}?"));
    }
    text
}

/// The known name closest to `wrong`, when close enough to be the one meant.
fn closest<'a>(wrong: &str, known: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = wrong.to_ascii_lowercase();
    known
        .map(|k| (strsim::jaro_winkler(&lower, &k.to_ascii_lowercase()), k))
        .filter(|(score, _)| *score >= SUGGEST_AT)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

fn or_top(path: &str) -> &str {
    if path.is_empty() { "the document" } else { path }
}

fn article(ty: &str) -> String {
    match ty {
        "integer" | "array" | "object" => format!("an {ty}"),
        "boolean" => "true or false".to_owned(),
        _ => format!("a {ty}"),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
    }
}

/// Every field path the schema defines under `spec` (`spec.sticky.cookie.name`, array items
/// without an index), so documentation can be checked for completeness.
pub fn spec_fields() -> Result<Vec<String>, String> {
    let spec = schema()?.pointer("/properties/spec").ok_or("the schema has no spec")?;
    let mut out = Vec::new();
    collect_fields(spec, "spec", &mut out);
    Ok(out)
}

fn collect_fields(schema: &Value, path: &str, out: &mut Vec<String>) {
    let schema = schema.get("items").unwrap_or(schema);
    for (k, s) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let p = join(path, k);
        out.push(p.clone());
        collect_fields(s, &p, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml_spec: serde_json::Value) -> Report {
        let mut doc = serde_json::json!({
            "apiVersion": "routeid.io/v1alpha1", "kind": "BalancerPool", "metadata": {"name": "shop"},
            "spec": yaml_spec,
        });
        check_pool(&mut doc)
    }

    fn member() -> Value {
        serde_json::json!({"address": "127.0.0.1:8081", "route": "a"})
    }

    #[test]
    fn unknown_fields_are_refused_with_the_field_meant() {
        let r = problems(serde_json::json!({
            "stiky": {}, "lbMetod": "ByTraffic",
            "frontend": {"host": ["a.example"]},
            "backend": {"members": [{"address": "127.0.0.1:8081", "route": "a", "loadFactr": 2}]},
        }));
        assert_eq!(
            r.problems,
            [
                "spec.lbMetod: unknown field, did you mean spec.lbMethod?",
                "spec.stiky: unknown field, did you mean spec.sticky?",
                "spec.backend.members[0].loadFactr: unknown field, did you mean spec.backend.members[0].loadFactor?",
                "spec.frontend.host: unknown field, did you mean spec.frontend.hosts?",
            ]
        );
        assert!(!r.unreadable);
    }

    #[test]
    fn a_far_off_name_lists_what_the_object_takes() {
        let r = problems(serde_json::json!({"backend": {"members": [member()]}, "zzz": 1}));
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].starts_with("spec.zzz: unknown field (spec takes "), "{}", r.problems[0]);
        assert!(r.problems[0].contains("lbMethod"), "{}", r.problems[0]);
    }

    #[test]
    fn enum_and_type_errors_do_not_stop_the_field_checks() {
        let r = problems(serde_json::json!({
            "lbMethod": "ByRequest",
            "backend": {"members": [{"address": "127.0.0.1:8081", "route": "a", "loadFactor": "two"}]},
            "sticky": {"cookie": {"name": "R", "mode": "insert", "secure": true, "sameSit": "Lax"}},
            "health": {"passive": {"failOnStatus": [503, 70000]}},
        }));
        assert_eq!(
            r.problems,
            [
                "spec.backend.members[0].loadFactor: invalid type: string \"two\", expected an integer",
                "spec.health.passive.failOnStatus[1]: 70000 is out of range (0–65535)",
                "spec.lbMethod: \"ByRequest\" is not one of ByRequests, ByTraffic, ByBusyness, Heartbeat, LeastLatency; did you mean ByRequests?",
                "spec.sticky.cookie.sameSit: unknown field, did you mean spec.sticky.cookie.sameSite?",
                "spec.sticky.cookie.mode: \"insert\" is not one of Insert, Prefix, Rewrite; did you mean Insert?",
            ]
        );
        // The bad list element stays; the bad fields of objects are gone.
        assert!(r.unreadable);
    }

    #[test]
    fn pruned_documents_still_read() {
        let mut doc = serde_json::json!({
            "apiVersion": "routeid.io/v1alpha1", "kind": "BalancerPool",
            "metadata": {"name": "shop", "namespce": "web"},
            "spec": {"lbMethod": 7, "backend": {"members": [member()], "maxConections": 3}},
        });
        let r = check_pool(&mut doc);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        assert_eq!(r.problems[0], "metadata.namespce: unknown field, did you mean metadata.namespace?");
        assert!(!r.unreadable);
        let pool: crate::api::BalancerPool = serde_json::from_value(doc).unwrap();
        assert_eq!(pool.spec.backend.members.len(), 1);
    }

    #[test]
    fn missing_required_fields_and_nulls() {
        let r = problems(serde_json::json!({"frontend": null}));
        assert_eq!(r.problems, ["spec.frontend: must not be empty (null)", "spec.backend: is required"]);
        assert!(r.unreadable);
        let r = problems(serde_json::json!({"backend": {"service": {"name": "s", "port": 8080}}, "sticky": null}));
        assert_eq!(r.problems, Vec::<String>::new());
    }

    #[test]
    fn the_schema_lists_nested_fields() {
        let fields = spec_fields().unwrap();
        for f in ["spec.sticky.cookie.maxAge", "spec.backend.members.loadFactor", "spec.health.active.path"] {
            assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
        }
    }
}
