//! Sampling parameters, their validation, token selection and stop strings.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::{Deserialize, Serialize};

use crate::error::InferenceError;

/// Most stop strings one request may give.
pub const MAX_STOP_STRINGS: usize = 8;
/// Longest stop string, in bytes.
pub const MAX_STOP_LEN: usize = 256;

/// How to pick tokens. Temperature 0 is greedy (argmax, deterministic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1]; 1 disables it.
    pub top_p: f64,
    /// Keep only the k most likely tokens; 0 disables it.
    pub top_k: usize,
    /// Random seed (sampling is deterministic for a seed).
    pub seed: u64,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Generation stops before any of these strings; they are not returned.
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            top_k: 40,
            seed: 0,
            max_tokens: 256,
            stop: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens`.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Check ranges; a clear error for each bad value.
    pub fn validate(&self) -> Result<(), InferenceError> {
        let bad = |m: String| Err(InferenceError::BadRequest(m));
        if !self.temperature.is_finite() || !(0.0..=5.0).contains(&self.temperature) {
            return bad(format!(
                "temperature {} is outside [0, 5]",
                self.temperature
            ));
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad(format!("top_p {} is outside (0, 1]", self.top_p));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return bad(format!("at most {MAX_STOP_STRINGS} stop strings"));
        }
        if self
            .stop
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_STOP_LEN)
        {
            return bad(format!("stop strings must be 1 to {MAX_STOP_LEN} bytes"));
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        let temperature = self.temperature;
        if temperature <= 0.0 {
            return Sampling::ArgMax;
        }
        match (self.top_k, self.top_p < 1.0) {
            (0, false) => Sampling::All { temperature },
            (k, false) => Sampling::TopK { k, temperature },
            (0, true) => Sampling::TopP {
                p: self.top_p,
                temperature,
            },
            (k, true) => Sampling::TopKThenTopP {
                k,
                p: self.top_p,
                temperature,
            },
        }
    }
}

/// Picks the next token from logits.
pub struct Sampler {
    inner: LogitsProcessor,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sampler")
    }
}

impl Sampler {
    /// A sampler for validated parameters.
    pub fn new(params: &SamplingParams) -> Self {
        Self {
            inner: LogitsProcessor::from_sampling(params.seed, params.sampling()),
        }
    }

    /// The next token for a 1-D logits vector.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32, InferenceError> {
        Ok(self.inner.sample(logits)?)
    }
}

/// Holds back generated text that could be the start of a stop string, and finds stops.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What the matcher lets out after a piece of text.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit (possibly empty); generation goes on.
    Emit(String),
    /// A stop string was found: emit this text and end.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for these stop strings.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.to_vec(),
            held: String::new(),
        }
    }

    /// Feed newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Emit(std::mem::take(&mut self.held));
        }
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(pos) = first {
            let mut out = std::mem::take(&mut self.held);
            out.truncate(pos);
            return StopOutcome::Stopped(out);
        }
        // Keep the longest suffix of `held` that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if let Some(prefix) = s.get(..i) {
                    if self.held.ends_with(prefix) {
                        keep = keep.max(prefix.len());
                    }
                }
            }
        }
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        StopOutcome::Emit(std::mem::replace(&mut self.held, rest))
    }

    /// The end of the stream: whatever was held back is ordinary text.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_each_bad_value() {
        assert!(SamplingParams::default().validate().is_ok());
        let bad = [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f64::NAN,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                max_tokens: 0,
                ..Default::default()
            },
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
            SamplingParams {
                stop: vec!["x".into(); 9],
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(
                matches!(p.validate(), Err(InferenceError::BadRequest(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn greedy_picks_argmax_and_seeded_sampling_is_reproducible() {
        let logits =
            Tensor::new(&[0.1f32, 3.0, 0.2, 2.9], &candle_core::Device::Cpu).expect("tensor");
        let mut g = Sampler::new(&SamplingParams::greedy(1));
        assert_eq!(g.sample(&logits).expect("sample"), 1);
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p);
            (0..32)
                .map(|_| s.sample(&logits).expect("sample"))
                .collect::<Vec<_>>()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        assert!(
            a.iter().any(|&t| t != 1),
            "temperature 1 should not always pick the argmax"
        );
        // top-k 1 is greedy whatever the temperature.
        let k1 = SamplingParams {
            temperature: 2.0,
            top_k: 1,
            seed: 3,
            ..Default::default()
        };
        assert!(draw(&k1).iter().all(|&t| t == 1));
        // top-p small keeps only the most likely token.
        let p_small = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.01,
            seed: 3,
            ..Default::default()
        };
        assert!(draw(&p_small).iter().all(|&t| t == 1));
    }

    #[test]
    fn stop_strings_across_pieces() {
        let mut m = StopMatcher::new(&["END".to_owned(), "\n\n".to_owned()]);
        assert_eq!(m.push("Hello E"), StopOutcome::Emit("Hello ".into()));
        assert_eq!(m.push("N"), StopOutcome::Emit(String::new()));
        assert_eq!(m.push("X more"), StopOutcome::Emit("ENX more".into()));
        assert_eq!(m.push(" and\n"), StopOutcome::Emit(" and".into()));
        assert_eq!(m.push("\nrest"), StopOutcome::Stopped(String::new()));
        let mut m = StopMatcher::new(&["END".to_owned()]);
        assert_eq!(m.push("abcEN"), StopOutcome::Emit("abc".into()));
        assert_eq!(m.finish(), "EN");
        let mut none = StopMatcher::new(&[]);
        assert_eq!(none.push("x"), StopOutcome::Emit("x".into()));
    }
}
