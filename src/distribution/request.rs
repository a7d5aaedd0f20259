//! Turns the model part of a request path (`/manifests/<name>`, `/models/<name>`) into a
//! validated [`ModelRef`], or a 400 that says what was wrong. Nothing here touches the
//! filesystem: a name that gets through is made only of OCI name-grammar components, so it can
//! never climb out of `manifests/` (`..`, absolute paths and encoded separators are all refused).

use crate::store::ModelRef;

/// Longest name accepted (well above any real one; the store's own limit is the same).
pub const MAX_NAME: usize = 512;

pub fn model_from_path(rest: &str) -> Result<ModelRef, String> {
    if rest.is_empty() {
        return Err("a model name is required, e.g. /models/llama3:8b".into());
    }
    if rest.len() > MAX_NAME {
        return Err(format!("model name longer than {MAX_NAME} bytes"));
    }
    // Valid names never need percent-encoding; decoding would only let `%2e%2e` or `%2f` in.
    if rest.contains('%') {
        return Err("percent-encoded characters are not allowed in model names".into());
    }
    if rest.starts_with('/') || rest.contains("//") || rest.contains('\\') || rest.contains("..") {
        return Err(format!(
            "invalid model name {rest:?}: path tricks are refused"
        ));
    }
    ModelRef::parse(rest).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tricks() {
        assert_eq!(
            model_from_path("qwen2.5:1.5b").unwrap().to_string(),
            "registry.ollama.ai/library/qwen2.5:1.5b"
        );
        assert_eq!(
            model_from_path("hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M")
                .unwrap()
                .to_string(),
            "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q4_K_M"
        );
        for bad in [
            "",
            "../../etc/passwd",
            "%2e%2e/x",
            "/etc/passwd",
            "a//b",
            "library/..:x",
            "x:..",
            "http://evil/a/b",
        ] {
            assert!(model_from_path(bad).is_err(), "{bad}");
        }
        assert!(model_from_path(&"a".repeat(600)).is_err());
    }
}
