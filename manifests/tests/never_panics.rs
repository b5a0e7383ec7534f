//! Property tests: the loader never panics, whatever it is given, and every error it
//! reports is located. Bounded in case count (PROPTEST_CASES overrides).

use proptest::prelude::*;
use serde_json::Value;
use strata_manifests::{Context, load_str};

const VALID: &str = include_str!("../../examples/local.yaml");

fn ctx() -> Context {
    Context {
        file: "fuzz.yaml".into(),
        base_dir: std::env::temp_dir(),
        home: None,
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary JSON-like trees with keys drawn partly from the real field names, so that
/// generated documents get deep into validation.
fn tree() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("apiVersion".to_string()),
        Just("kind".to_string()),
        Just("metadata".to_string()),
        Just("name".to_string()),
        Just("spec".to_string()),
        Just("hosts".to_string()),
        Just("roles".to_string()),
        Just("address".to_string()),
        Just("network".to_string()),
        Just("podCIDR".to_string()),
        Just("platform".to_string()),
        Just("local".to_string()),
        "[a-zA-Z~/]{0,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        Just(Value::from("strata.dev/v1alpha1")),
        Just(Value::from("Cluster")),
        Just(Value::from("etcd")),
        Just(Value::from("10.244.0.0/16")),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn assert_located(text: &str) {
    if let Err(report) = load_str(text, &ctx()) {
        assert!(report.has_errors());
        for d in report.errors() {
            assert!(
                d.location.is_some() || d.message == "the file is empty",
                "unlocated error {d:?} for input {text:?}"
            );
        }
        // The report always renders.
        let _ = report.to_string();
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        assert_located(&text);
    }

    #[test]
    fn arbitrary_yaml_documents(v in tree()) {
        let text = serde_saphyr::to_string(&v).unwrap_or_default();
        assert_located(&text);
    }

    #[test]
    fn mutated_valid_file(pos in 0usize..VALID.len(), len in 0usize..40, insert in ".{0,6}") {
        let mut text = VALID.to_string();
        let start = (0..=pos).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let mut end = (start + len).min(text.len());
        while !text.is_char_boundary(end) { end -= 1; }
        text.replace_range(start..end, &insert);
        assert_located(&text);
    }
}
