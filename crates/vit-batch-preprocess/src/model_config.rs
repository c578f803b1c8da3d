//! What `score` reads from a model folder's `config.json`: the class names
//! (`id2label`), `label2id` and `patch_size`.
//!
//! Why it lives here: a model folder is user input, and this crate is the one the
//! fuzzer builds alone (`fuzz/fuzz_targets/model_config.rs`), so the parser is fuzzed
//! without linking ONNX Runtime. Everything else in `config.json` is ignored.

use std::collections::BTreeMap;

/// The parts of a Hugging Face `config.json` that scoring needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// Class names by id, when `id2label` is present.
    pub labels: Option<Vec<String>>,
    /// `label2id` (name -> id); entries whose id is not a non-negative integer are
    /// left out.
    pub label2id: BTreeMap<String, usize>,
    /// `patch_size`, when present and a non-negative integer.
    pub patch_size: Option<usize>,
}

/// Class names by id from an `id2label` map whose keys must be exactly `0..n`.
pub fn labels_from_id2label(map: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    let mut out = vec![None; map.len()];
    for (k, v) in map {
        let i: usize = k
            .parse()
            .map_err(|_| format!("id2label key '{k}' is not a class index"))?;
        if i >= out.len() || out[i].is_some() {
            return Err(format!(
                "id2label ids must be exactly 0..{}; found '{k}'",
                map.len()
            ));
        }
        out[i] = Some(v.clone());
    }
    Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect())
}

/// Parse `config.json` text; the error is a message for the user.
pub fn parse_model_config(text: &str) -> Result<ModelConfig, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut cfg = ModelConfig::default();
    if let Some(map) = v.get("id2label").and_then(|m| m.as_object()) {
        let m: BTreeMap<String, String> = map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
        cfg.labels = Some(labels_from_id2label(&m)?);
    }
    cfg.patch_size = v
        .get("patch_size")
        .and_then(|p| p.as_u64())
        .and_then(|p| usize::try_from(p).ok());
    if let Some(map) = v.get("label2id").and_then(|m| m.as_object()) {
        for (k, v) in map {
            if let Some(i) = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .and_then(|i| usize::try_from(i).ok())
            {
                cfg.label2id.insert(k.clone(), i);
            }
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_ids_and_refusals() {
        let c = parse_model_config(
            r#"{"id2label": {"1": "dog", "0": "cat"}, "label2id": {"cat": 0, "dog": "1", "x": -3}, "patch_size": 16}"#,
        )
        .unwrap();
        assert_eq!(c.labels.unwrap(), ["cat", "dog"]);
        assert_eq!(c.label2id.len(), 2);
        assert_eq!(c.patch_size, Some(16));
        for bad in [
            r#"{"id2label": {"0": "a", "2": "b"}}"#,
            r#"{"id2label": {"0": "a", "00": "b"}}"#,
            r#"{"id2label": {"-1": "a"}}"#,
            "not json",
        ] {
            assert!(parse_model_config(bad).is_err(), "{bad}");
        }
    }
}
