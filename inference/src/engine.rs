//! Generation: a request becomes a [`Sequence`] that yields events one decode step at a time.
//! The scheduler interleaves sequences; [`Engine::generate_blocking`] runs one to the end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::InferenceError;
use crate::model::{feed_many, Feed, Model, Session};
use crate::sampling::{Sampler, SamplingParams, StopMatcher, StopOutcome};
use crate::template::Message;
use crate::tokenizer::StreamDecoder;

/// A chat completion request. Messages are prompt material: `Debug` does not show them.
#[derive(Clone, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// Model name (empty: the only or default model).
    #[serde(default)]
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Sampling.
    #[serde(default)]
    pub params: SamplingParams,
}

impl std::fmt::Debug for GenerateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateRequest")
            .field("model", &self.model)
            .field(
                "messages",
                &format_args!("<redacted: {} messages>", self.messages.len()),
            )
            .field("params", &self.params)
            .finish()
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, or a stop string was reached.
    Stop,
    /// `max_tokens` or the context was reached.
    Length,
}

/// Totals and timings of one completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Tokens in the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated (including an end-of-turn token, if one ended it).
    pub completion_tokens: usize,
    /// Time from start of prefill to the first generated token.
    pub ttft_ms: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

/// One step's output.
#[derive(Clone, PartialEq)]
pub enum Event {
    /// A generated token and the text it completes (possibly empty).
    Token {
        /// Token id.
        id: u32,
        /// Text now safe to show.
        text: String,
    },
    /// The end, with totals.
    Done(Usage),
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token { id, .. } => write!(f, "Token {{ id: {id}, text: <redacted> }}"),
            Self::Done(u) => f.debug_tuple("Done").field(u).finish(),
        }
    }
}

/// Prompt tokens fed per step at most: a long prompt is prefilled over several steps, so the
/// sequences decoding beside it keep getting tokens.
pub const PREFILL_CHUNK: usize = 256;

/// A request in progress, with its own KV cache.
#[derive(Debug)]
pub struct Sequence {
    model: Arc<Model>,
    session: Session,
    sampler: Sampler,
    stop: StopMatcher,
    decoder: StreamDecoder,
    params: SamplingParams,
    prompt: Vec<u32>,
    /// Prompt tokens already fed.
    prefilled: usize,
    generated: Vec<u32>,
    started: Instant,
    first_token_at: Option<Instant>,
    done: bool,
}

impl Sequence {
    /// Prepare a request: render, tokenize, check limits. No model work yet.
    pub fn new(model: Arc<Model>, req: &GenerateRequest) -> Result<Self, InferenceError> {
        req.params.validate()?;
        let rendered = model.template.render(&req.messages)?;
        let mut prompt = model.tokenizer.encode(&rendered, true);
        // BOS once: templates that write it themselves (Llama 3) get no second one.
        if let Some(bos) = model.tokenizer.bos_to_add() {
            if prompt.first() != Some(&bos) {
                prompt.insert(0, bos);
            }
        }
        Self::from_tokens(model, prompt, req.params.clone())
    }

    /// Start from prompt tokens (raw completion, no template).
    pub fn from_tokens(
        model: Arc<Model>,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<Self, InferenceError> {
        params.validate()?;
        let context = model.identity.context_length;
        if prompt.is_empty() {
            return Err(InferenceError::BadRequest("the prompt is empty".into()));
        }
        if prompt.len() + 1 > context {
            return Err(InferenceError::ContextTooLong {
                prompt_tokens: prompt.len(),
                max_tokens: params.max_tokens,
                context,
            });
        }
        let vocab = model.tokenizer.vocab_size();
        if prompt.iter().any(|&t| t as usize >= vocab) {
            return Err(InferenceError::BadRequest(
                "token id outside the vocabulary".into(),
            ));
        }
        Ok(Self {
            session: model.session()?,
            sampler: Sampler::new(&params),
            stop: StopMatcher::new(&params.stop),
            decoder: StreamDecoder::default(),
            params,
            prompt,
            prefilled: 0,
            generated: Vec::new(),
            started: Instant::now(),
            first_token_at: None,
            done: false,
            model,
        })
    }

    /// Prompt tokens.
    pub fn prompt_tokens(&self) -> &[u32] {
        &self.prompt
    }

    /// Whether it has finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn usage(&self, finish_reason: FinishReason) -> Usage {
        let now = Instant::now();
        let (ttft_ms, decode_tokens_per_s) = match self.first_token_at {
            Some(t) => {
                let decode_secs = now.duration_since(t).as_secs_f64();
                let after_first = self.generated.len().saturating_sub(1) as f64;
                (
                    t.duration_since(self.started).as_secs_f64() * 1e3,
                    if decode_secs > 0.0 {
                        after_first / decode_secs
                    } else {
                        0.0
                    },
                )
            }
            None => (0.0, 0.0),
        };
        Usage {
            finish_reason,
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.generated.len(),
            ttft_ms,
            decode_tokens_per_s,
        }
    }

    fn finish(&mut self, reason: FinishReason, out: &mut Vec<Event>, tail_id: Option<u32>) {
        let mut tail = self.decoder.finish();
        if reason == FinishReason::Length || tail_id.is_some() {
            tail.push_str(&self.stop.finish());
        }
        if !tail.is_empty() {
            // Text held back at the end belongs to the last token.
            let id = self.generated.last().copied().unwrap_or(0);
            out.push(Event::Token { id, text: tail });
        }
        out.push(Event::Done(self.usage(reason)));
        self.done = true;
    }

    /// What the next step feeds: the next chunk of the prompt, or the last generated token;
    /// and whether logits are needed after it (only once the prompt is all in).
    fn next_input(&self) -> (&[u32], bool) {
        match self.generated.last() {
            None => {
                let rest = self.prompt.get(self.prefilled..).unwrap_or_default();
                let chunk = rest.get(..PREFILL_CHUNK).unwrap_or(rest);
                (chunk, chunk.len() == rest.len())
            }
            Some(last) => (std::slice::from_ref(last), true),
        }
    }

    /// One step on its own: a chunk of prefill, or one token.
    pub fn step(&mut self) -> Result<Vec<Event>, InferenceError> {
        step_many(&mut [self])
            .pop()
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Take the result of feeding `fed` tokens.
    fn advance(
        &mut self,
        fed: usize,
        logits: Option<candle_core::Tensor>,
    ) -> Result<Vec<Event>, InferenceError> {
        let mut out = Vec::new();
        if self.generated.is_empty() {
            self.prefilled += fed;
            if self.prefilled < self.prompt.len() {
                return Ok(out);
            }
        }
        let logits =
            logits.ok_or_else(|| InferenceError::Internal("no logits after the prompt".into()))?;
        let id = self.sampler.sample(&logits)?;
        if self.first_token_at.is_none() {
            self.first_token_at = Some(Instant::now());
        }
        self.generated.push(id);
        if self.model.tokenizer.is_eog(id) {
            out.push(Event::Token {
                id,
                text: String::new(),
            });
            self.finish(FinishReason::Stop, &mut out, Some(id));
            return Ok(out);
        }
        let text = self.decoder.push(&self.model.tokenizer.token_bytes(id));
        match self.stop.push(&text) {
            StopOutcome::Emit(t) => out.push(Event::Token { id, text: t }),
            StopOutcome::Stopped(t) => {
                out.push(Event::Token { id, text: t });
                out.push(Event::Done(self.usage(FinishReason::Stop)));
                self.done = true;
                return Ok(out);
            }
        }
        let at_context = self.session.position() + 1 >= self.model.identity.context_length;
        if self.generated.len() >= self.params.max_tokens || at_context {
            self.finish(FinishReason::Length, &mut out, None);
        }
        Ok(out)
    }

    /// Generated token ids so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }
}

/// One step for each sequence, together: sequences on the same native model are decoded as one
/// batch (one pass over the weights for all of them; see [`feed_many`]). Finished sequences
/// yield no events. A sequence's error is its own; the others go on.
pub fn step_many(seqs: &mut [&mut Sequence]) -> Vec<Result<Vec<Event>, InferenceError>> {
    // What each unfinished sequence feeds (copied: the sessions are borrowed mutably below).
    let inputs: Vec<Option<(Vec<u32>, bool)>> = seqs
        .iter_mut()
        .map(|s| {
            if s.done {
                return None;
            }
            if s.generated.is_empty() && s.prefilled == 0 {
                s.started = Instant::now();
            }
            let (t, l) = s.next_input();
            Some((t.to_vec(), l))
        })
        .collect();
    let mut feeds: Vec<Feed<'_>> = seqs
        .iter_mut()
        .zip(&inputs)
        .filter_map(|(s, input)| {
            input.as_ref().map(|(tokens, logits)| Feed {
                session: &mut s.session,
                tokens,
                logits: *logits,
            })
        })
        .collect();
    let mut results = feed_many(&mut feeds).into_iter();
    drop(feeds);
    let mut out = Vec::with_capacity(seqs.len());
    for (s, input) in seqs.iter_mut().zip(&inputs) {
        let Some((tokens, _)) = input else {
            out.push(Ok(Vec::new()));
            continue;
        };
        out.push(match results.next() {
            Some(Ok(logits)) => s.advance(tokens.len(), logits),
            Some(Err(e)) => Err(e),
            None => Err(InferenceError::Internal("missing step result".into())),
        });
    }
    out
}

/// The models this process serves, by name.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    models: BTreeMap<String, Arc<Model>>,
    default: Option<String>,
}

/// A finished completion.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The text.
    pub text: String,
    /// Prompt token ids (after the chat template).
    pub prompt_tokens: Vec<u32>,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Totals.
    pub usage: Usage,
}

impl Engine {
    /// An engine serving one model (also the default).
    pub fn single(model: Model) -> Self {
        let mut e = Self::default();
        e.add(model);
        e
    }

    /// Add a model; the first added is the default.
    pub fn add(&mut self, model: Model) {
        let name = model.identity.name.clone();
        if self.default.is_none() {
            self.default = Some(name.clone());
        }
        self.models.insert(name, Arc::new(model));
    }

    /// Models served.
    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    /// The model a request names (empty name: the default).
    pub fn model(&self, name: &str) -> Result<Arc<Model>, InferenceError> {
        let key = if name.is_empty() {
            self.default.as_deref().unwrap_or("")
        } else {
            name
        };
        self.models
            .get(key)
            .cloned()
            .ok_or_else(|| InferenceError::UnknownModel(name.to_owned()))
    }

    /// Run one request to the end on this thread, calling `on_text` with each piece.
    pub fn generate_blocking(
        &self,
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str),
    ) -> Result<Completion, InferenceError> {
        let mut seq = Sequence::new(self.model(&req.model)?, req)?;
        let mut text = String::new();
        loop {
            for ev in seq.step()? {
                match ev {
                    Event::Token { text: t, .. } => {
                        on_text(&t);
                        text.push_str(&t);
                    }
                    Event::Done(usage) => {
                        return Ok(Completion {
                            text,
                            prompt_tokens: seq.prompt_tokens().to_vec(),
                            tokens: seq.generated().to_vec(),
                            usage,
                        });
                    }
                }
            }
        }
    }
}
