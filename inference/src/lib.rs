//! Chrysalis inference engine: quantized LLMs (llama family, qwen2) on candle.
//!
//! - [`model`]: loading a GGUF or a Hugging Face directory (read once, hashed), devices,
//!   sessions, batched feeding.
//! - [`hf`]: Hugging Face directories: config, safetensors weights, manifest identity.
//! - [`cpu`]: the native CPU engine: our quantized kernels and a batched llama-family forward.
//! - [`tokenizer`]: byte-level BPE from the GGUF metadata or `tokenizer.json`, with the right
//!   pre-tokenizer.
//! - [`template`]: the chat template the GGUF carries, rendered with minijinja.
//! - [`sampling`]: parameters, greedy/temperature/top-k/top-p sampling, stop strings.
//! - [`engine`]: a request as a stepwise [`engine::Sequence`]; the [`engine::Engine`] of models.
//! - [`scheduler`]: bounded queue, fair interleaving, back-pressure, cancellation.
//!
//! Prompts and generated text never reach logs: request and event types redact them in `Debug`.
#![forbid(unsafe_code)]

pub mod cpu;
pub mod engine;
pub mod error;
pub mod hf;
pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod template;
pub mod tokenizer;

pub use engine::{
    step_many, Completion, Engine, Event, FinishReason, GenerateRequest, Sequence, Usage,
};
pub use error::InferenceError;
pub use model::{
    feed_many, DeviceChoice, Feed, LoadOptions, Model, ModelIdentity, Precision, Session,
};
pub use sampling::SamplingParams;
pub use scheduler::{Scheduler, SchedulerConfig};
pub use template::Message;

use std::path::PathBuf;

/// File name of the embedded default model (SmolLM2-135M-Instruct, GGUF Q4_1, Apache-2.0).
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the default model file, pinned by `scripts/fetch-model.sh`.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// Name the default model is served under.
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-instruct";

/// Where the default model is looked for, in order: `$CHRYSALIS_MODEL`, the image's
/// `/usr/share/chrysalis/models/`, and the source tree's `models/` (filled by `make model`).
pub fn default_model_candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("CHRYSALIS_MODEL") {
        v.push(PathBuf::from(p));
    }
    v.push(PathBuf::from("/usr/share/chrysalis/models").join(DEFAULT_MODEL_FILE));
    v.push(
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")).join(DEFAULT_MODEL_FILE),
    );
    v
}

/// The default model's path, or an error that says how to fetch it.
pub fn default_model_path() -> Result<PathBuf, InferenceError> {
    let c = default_model_candidates();
    c.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        InferenceError::UnknownModel(format!(
            "the default model {DEFAULT_MODEL_FILE} is not installed (looked in {}); run `make model`",
            c.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// Load the default model, checking its pinned SHA-256.
pub fn load_default(opts: &LoadOptions) -> Result<Model, InferenceError> {
    let path = default_model_path()?;
    let opts = LoadOptions {
        name: Some(
            opts.name
                .clone()
                .unwrap_or_else(|| DEFAULT_MODEL_NAME.into()),
        ),
        ..opts.clone()
    };
    let model = Model::load(&path, &opts)?;
    if hex::encode(model.identity.sha256) != DEFAULT_MODEL_SHA256 {
        return Err(InferenceError::BadModel(format!(
            "{} does not have the pinned SHA-256 of the default model; run `make model`",
            path.display()
        )));
    }
    Ok(model)
}
