//! The CRDs as a cluster will see them: the checked-in YAML matches the types, every
//! schema is structural, the printer columns are the ones users read, and the examples
//! are valid resources.

use serde_json::Value;
use std::path::Path;
use tutti_crds::schema_check::structural_violations;
use tutti_crds::{Broadcast, Recording, Room, ShardPool, crds, to_yaml};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn checked_in_yaml_matches_the_types() {
    let chart = root().join("../charts/tutti/crds");
    for (file, crd) in crds() {
        let generated = to_yaml(&crd).expect("serializable CRD");
        // The chart ships its own copy (Helm installs CRDs from its crds/ folder).
        for path in [root().join(file), chart.join(file)] {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!("{}: {e}; run `cargo run --bin crdgen`", path.display())
            });
            assert!(
                on_disk == generated,
                "{} differs from the Rust types; run `cargo run --bin crdgen` and commit",
                path.display()
            );
        }
    }
}

#[test]
fn every_schema_is_structural() {
    for (file, crd) in crds() {
        let crd = serde_json::to_value(&crd).expect("CRD as JSON");
        let versions = crd["spec"]["versions"].as_array().expect("versions");
        for version in versions {
            let schema = &version["schema"]["openAPIV3Schema"];
            assert!(schema.is_object(), "{file}: no schema");
            // Resource quantities in the shard template are int-or-string; nothing keeps
            // unknown fields.
            let problems: Vec<String> = structural_violations(schema, &[])
                .into_iter()
                .filter(|p| !is_int_or_string_branch(schema, p))
                .collect();
            assert!(
                problems.is_empty(),
                "{file} is not structural:\n{}",
                problems.join("\n")
            );
            assert_eq!(
                version["subresources"]["status"],
                serde_json::json!({}),
                "{file}"
            );
        }
    }
}

/// The API server allows typed branches under `x-kubernetes-int-or-string` (exactly
/// `anyOf: [{type: integer}, {type: string}]`); that is the one junctor exception.
fn is_int_or_string_branch(schema: &Value, problem: &str) -> bool {
    let Some((path, rest)) = problem.split_once(".anyOf[") else {
        return false;
    };
    if !rest.ends_with("type inside a junctor") {
        return false;
    }
    let mut node = schema;
    for step in path.split('.').filter(|s| !s.is_empty()) {
        node = match step.strip_suffix("{}") {
            Some(name) => &node["properties"][name]["additionalProperties"],
            None => &node["properties"][step],
        };
    }
    node["x-kubernetes-int-or-string"] == true
}

#[test]
fn printer_columns_are_what_kubectl_get_shows() {
    let expected = [
        (
            "rooms.yaml",
            vec!["Phase", "Shard", "Participants", "Max", "Audio", "Age"],
        ),
        (
            "broadcasts.yaml",
            vec!["Phase", "Origin", "Edges", "Viewers", "Age"],
        ),
        (
            "recordings.yaml",
            vec!["Phase", "Shard", "Duration", "Bytes", "Age"],
        ),
        (
            "shardpools.yaml",
            vec!["Ready", "Draining", "Min", "Max", "Load", "Age"],
        ),
    ];
    for ((file, crd), (expected_file, columns)) in crds().into_iter().zip(expected) {
        assert_eq!(file, expected_file);
        let crd = serde_json::to_value(&crd).expect("CRD as JSON");
        let names: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, columns, "{file}");
    }
}

#[test]
fn examples_are_valid_resources() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("examples")).expect("examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document).expect("YAML");
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            let result = match kind.as_str() {
                "Room" => serde_json::from_value::<Room>(value).map(|_| ()),
                "Broadcast" => serde_json::from_value::<Broadcast>(value).map(|_| ()),
                "ShardPool" => serde_json::from_value::<ShardPool>(value).map(|_| ()),
                "Recording" => serde_json::from_value::<Recording>(value).map(|_| ()),
                _ => continue,
            };
            result.unwrap_or_else(|e| panic!("{}: {kind}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 4, "examples found: {seen}");
}
