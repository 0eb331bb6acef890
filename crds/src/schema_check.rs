//! Checks that an OpenAPI v3 schema is *structural*, as the Kubernetes API server demands
//! of every CRD (apiextensions.k8s.io/v1, "Specifying a structural schema"):
//!
//! 1. every schema node (the root, each property, array item and map value) has a `type`,
//!    unless it is `x-kubernetes-int-or-string` or keeps unknown fields;
//! 2. inside `allOf`/`anyOf`/`oneOf`/`not` only value validations appear: no `type`,
//!    `description`, `default`, `nullable`, `additionalProperties`, and no property that
//!    the node itself does not declare;
//! 3. no `$ref` or `definitions` (schemas must be inlined);
//! 4. `properties` and `additionalProperties` never together;
//! 5. `x-kubernetes-preserve-unknown-fields` only at paths the caller allows.

use serde_json::Value;

/// Keywords forbidden inside a logical junctor.
const NOT_IN_JUNCTORS: [&str; 5] = [
    "type",
    "description",
    "default",
    "nullable",
    "additionalProperties",
];

/// Every violation found, as `path: problem`; empty when the schema is structural.
pub fn structural_violations(schema: &Value, allowed_preserve: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    check_node(schema, "", allowed_preserve, &mut problems);
    problems
}

fn check_node(node: &Value, path: &str, allowed_preserve: &[&str], problems: &mut Vec<String>) {
    let Some(object) = node.as_object() else {
        problems.push(format!("{path}: not a schema object"));
        return;
    };
    let here = if path.is_empty() { "<root>" } else { path };
    for forbidden in ["$ref", "definitions", "$defs"] {
        if object.contains_key(forbidden) {
            problems.push(format!("{here}: uses {forbidden}"));
        }
    }
    let preserves = object
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if preserves && !allowed_preserve.contains(&path) {
        problems.push(format!(
            "{here}: x-kubernetes-preserve-unknown-fields where not intended"
        ));
    }
    let int_or_string = object
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let typed = object
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if !typed && !int_or_string && !preserves {
        problems.push(format!("{here}: no type"));
    }
    if object.contains_key("properties") && object.contains_key("additionalProperties") {
        problems.push(format!("{here}: both properties and additionalProperties"));
    }
    let declared: Vec<&str> = object
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    for junctor in ["allOf", "anyOf", "oneOf"] {
        if let Some(branches) = object.get(junctor).and_then(Value::as_array) {
            for (index, branch) in branches.iter().enumerate() {
                check_junctor(
                    branch,
                    &format!("{here}.{junctor}[{index}]"),
                    &declared,
                    problems,
                );
            }
        }
    }
    if let Some(not) = object.get("not") {
        check_junctor(not, &format!("{here}.not"), &declared, problems);
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            check_node(child, &format!("{path}.{name}"), allowed_preserve, problems);
        }
    }
    if let Some(items) = object.get("items") {
        check_node(items, &format!("{path}[]"), allowed_preserve, problems);
    }
    if let Some(values) = object.get("additionalProperties")
        && values.is_object()
    {
        check_node(values, &format!("{path}{{}}"), allowed_preserve, problems);
    }
}

fn check_junctor(branch: &Value, path: &str, declared: &[&str], problems: &mut Vec<String>) {
    let Some(object) = branch.as_object() else {
        problems.push(format!("{path}: not a schema object"));
        return;
    };
    for keyword in NOT_IN_JUNCTORS {
        if object.contains_key(keyword) {
            problems.push(format!("{path}: {keyword} inside a junctor"));
        }
    }
    if let Some(properties) = object.get("properties").and_then(Value::as_object) {
        for name in properties.keys() {
            if !declared.contains(&name.as_str()) {
                problems.push(format!(
                    "{path}: property {name} not declared outside the junctor"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_each_kind_of_non_structural_schema() {
        let good = json!({"type": "object", "properties": {
            "a": {"type": "string"},
            "b": {"type": "array", "items": {"type": "integer"}},
            "c": {"type": "object", "additionalProperties": {"type": "string"}},
            "q": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}
        }});
        // int-or-string's junctor carries types, which the API server allows there alone.
        let problems = structural_violations(&good, &[]);
        assert_eq!(
            problems,
            vec![
                ".q.anyOf[0]: type inside a junctor",
                ".q.anyOf[1]: type inside a junctor"
            ]
        );
        let cases = [
            (json!({"properties": {}}), "<root>: no type"),
            (
                json!({"type": "object", "properties": {"x": {"description": "untyped"}}}),
                ".x: no type",
            ),
            (
                json!({"type": "object", "properties": {"x": {"$ref": "#/d"}}}),
                ".x: uses $ref",
            ),
            (
                json!({"type": "object", "anyOf": [{"properties": {"y": {}}}]}),
                "property y not declared",
            ),
            (
                json!({"type": "object", "oneOf": [{"type": "object"}]}),
                "type inside a junctor",
            ),
            (
                json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
                "not intended",
            ),
            (
                json!({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}),
                "both",
            ),
        ];
        for (schema, needle) in cases {
            let problems = structural_violations(&schema, &[]);
            assert!(
                problems.iter().any(|p| p.contains(needle)),
                "{schema}: {problems:?}"
            );
        }
        let preserved = json!({"type": "object", "properties": {"raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}});
        assert!(structural_violations(&preserved, &[".raw"]).is_empty());
    }
}
