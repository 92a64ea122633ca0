//! Typed errors of the inference engine. None of them carries prompt text.

/// What went wrong, in a form a server maps to a status and a client understands.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The model asked for is not loaded here.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// A model file we cannot serve (architecture, tokenizer or format not supported).
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    /// A model file that is malformed.
    #[error("invalid model file: {0}")]
    BadModel(String),
    /// A model file that cannot be read.
    #[error("cannot read model {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The request's parameters are out of range.
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// Prompt plus requested tokens exceed the model's context.
    #[error("context too long: the prompt has {prompt_tokens} tokens and the model's context is {context} (with max_tokens {max_tokens})")]
    ContextTooLong {
        /// Tokens in the rendered prompt.
        prompt_tokens: usize,
        /// Requested completion tokens.
        max_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// The scheduler's queue is full: try again later.
    #[error("busy: {0} requests are already waiting; try again later")]
    Busy(usize),
    /// The engine is shutting down.
    #[error("the inference engine is shutting down")]
    ShuttingDown,
    /// A failure inside the tensor library.
    #[error("inference failed: {0}")]
    Internal(String),
}

impl From<candle_core::Error> for InferenceError {
    fn from(e: candle_core::Error) -> Self {
        Self::Internal(e.to_string())
    }
}
