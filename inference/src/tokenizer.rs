//! Byte-level BPE tokenizer built from GGUF metadata (`tokenizer.ggml.*`) or from a Hugging Face
//! `tokenizer.json` ([`Tokenizer::from_hf`]), both onto the same splitting and merging code, so a
//! model gives the same tokens whichever form it comes in.
//!
//! GGUF files of the GPT-2 tokenizer family carry the vocabulary (as GPT-2 "byte-to-unicode"
//! strings), the merge ranks, the token types and the name of the pre-tokenizer
//! (`tokenizer.ggml.pre`). The pre-tokenizer is what generic loaders get wrong: SmolLM2 isolates
//! every digit before applying the GPT-2 split, Qwen2 and Llama 3 use their own patterns. We
//! select the pattern sequence by that name, as llama.cpp does, and refuse names we do not know
//! rather than guess.
//!
//! Special tokens (GGUF token types 3 "control" and 4 "user defined") are recognised literally in
//! the input, so a chat template's `<|im_start|>` becomes one token.

use std::collections::HashMap;

use candle_core::quantized::gguf_file;
use fancy_regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::error::InferenceError;

/// GGUF token type of a control token (`<|im_start|>`, `<|endoftext|>`, ...).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token, also matched literally.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The GPT-2 split, as llama.cpp writes it (text no pattern matches stays a piece of its own).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer patterns for a `tokenizer.ggml.pre` name, applied in order.
fn pre_tokenizer_patterns(pre: &str) -> Result<&'static [&'static str], InferenceError> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => &[GPT2_SPLIT],
        // SmolLM / SmolLM2: digits isolated first (HF `Digits(individual_digits=true)`).
        "smollm" => &[r"\p{N}", GPT2_SPLIT],
        "qwen2" => &[QWEN2_SPLIT],
        "llama3" | "llama-v3" | "llama-bpe" => &[LLAMA3_SPLIT],
        other => {
            return Err(InferenceError::UnsupportedModel(format!(
                "pre-tokenizer {other:?} is not supported (known: gpt2, smollm, qwen2, llama-bpe)"
            )))
        }
    })
}

/// GPT-2's reversible map from bytes to printable characters: the texts of a byte-level BPE
/// vocabulary's 256 single-byte tokens, in byte order.
pub fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let code = if printable {
            b as u32
        } else {
            let c = next;
            next += 1;
            c
        };
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

/// A tokenizer for one model.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    tokens: Vec<String>,
    special: Vec<bool>,
    /// Special tokens, longest first, for literal matching.
    specials_by_len: Vec<(String, u32)>,
    merges: HashMap<(String, String), u32>,
    splits: Vec<Regex>,
    nfc: bool,
    ignore_merges: bool,
    byte_enc: [char; 256],
    byte_dec: HashMap<char, u8>,
    /// Token ids that end generation.
    eog: Vec<u32>,
    bos: Option<u32>,
    add_bos: bool,
    pre: String,
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(key)
}

fn bad(key: &str, why: impl std::fmt::Display) -> InferenceError {
    InferenceError::BadModel(format!("GGUF metadata {key}: {why}"))
}

fn string_array(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>, InferenceError> {
    let v = md(ct, key).ok_or_else(|| bad(key, "missing"))?;
    let arr = v.to_vec().map_err(|e| bad(key, e))?;
    arr.iter()
        .map(|x| x.to_string().cloned().map_err(|e| bad(key, e)))
        .collect()
}

fn opt_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    md(ct, key).and_then(|v| v.to_u32().ok())
}

/// What a tokenizer is made of, whichever file describes it.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    /// Token texts by id (byte-level encoded for ordinary tokens, literal for special ones).
    pub tokens: Vec<String>,
    /// Per id: matched literally in the input and decoded literally (control / added tokens).
    pub special: Vec<bool>,
    /// Merge pairs, lowest rank first.
    pub merges: Vec<(String, String)>,
    /// Pre-tokenizer split patterns, applied in order.
    pub splits: Vec<String>,
    /// Unicode NFC normalization of ordinary text before it is split.
    pub nfc: bool,
    /// A piece that is itself in the vocabulary is one token, without merging (Llama 3).
    pub ignore_merges: bool,
    /// Ids that end generation, before the well-known turn-end tokens are added.
    pub eog: Vec<u32>,
    /// The BOS token.
    pub bos: Option<u32>,
    /// Whether BOS is prepended to a prompt.
    pub add_bos: bool,
    /// Name of the pre-tokenizer, for diagnostics.
    pub pre: String,
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self, InferenceError> {
        let model = md(ct, "tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .ok_or_else(|| bad("tokenizer.ggml.model", "missing"))?;
        if model != "gpt2" {
            return Err(InferenceError::UnsupportedModel(format!(
                "tokenizer model {model:?}: only byte-level BPE (\"gpt2\") is supported"
            )));
        }
        let pre = md(ct, "tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| "default".to_owned());
        let tokens = string_array(ct, "tokenizer.ggml.tokens")?;
        let merges = string_array(ct, "tokenizer.ggml.merges")?
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| {
                        bad(
                            "tokenizer.ggml.merges",
                            format!("entry {rank} has no space"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let types: Vec<i32> = match md(ct, "tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| bad("tokenizer.ggml.token_type", e))?
                .iter()
                .map(|x| x.to_i32().map_err(|e| bad("tokenizer.ggml.token_type", e)))
                .collect::<Result<_, _>>()?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(bad(
                "tokenizer.ggml.token_type",
                "length differs from tokens",
            ));
        }
        let special = types
            .iter()
            .map(|&t| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .collect();
        let n = tokens.len();
        let eos = opt_u32(ct, "tokenizer.ggml.eos_token_id");
        let eot = opt_u32(ct, "tokenizer.ggml.eot_token_id");
        let eog: Vec<u32> = eos.into_iter().chain(eot).collect();
        if eog.iter().any(|&id| id as usize >= n) {
            return Err(bad("tokenizer.ggml.eos_token_id", "out of range"));
        }
        let splits = pre_tokenizer_patterns(&pre)?
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        Self::build(Parts {
            tokens,
            special,
            merges,
            splits,
            nfc: false,
            // As llama.cpp does for the Llama 3 pre-tokenizer (`ignore_merges` in its
            // tokenizer.json).
            ignore_merges: matches!(pre.as_str(), "llama3" | "llama-v3" | "llama-bpe"),
            eog,
            bos: opt_u32(ct, "tokenizer.ggml.bos_token_id").filter(|&id| (id as usize) < n),
            add_bos: md(ct, "tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            pre,
        })
    }

    /// Assemble a tokenizer from its parts.
    pub(crate) fn build(p: Parts) -> Result<Self, InferenceError> {
        let Parts {
            tokens,
            special,
            merges: merge_list,
            splits,
            nfc,
            ignore_merges,
            mut eog,
            bos,
            add_bos,
            pre,
        } = p;
        if tokens.is_empty() {
            return Err(InferenceError::BadModel("empty vocabulary".into()));
        }
        if special.len() != tokens.len() {
            return Err(InferenceError::Internal(
                "special flags differ from tokens".into(),
            ));
        }
        let mut vocab = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let id =
                u32::try_from(i).map_err(|_| InferenceError::BadModel("too many tokens".into()))?;
            vocab.entry(t.clone()).or_insert(id);
        }
        let mut merges = HashMap::with_capacity(merge_list.len());
        for (rank, pair) in merge_list.into_iter().enumerate() {
            let rank = u32::try_from(rank)
                .map_err(|_| InferenceError::BadModel("too many merges".into()))?;
            merges.entry(pair).or_insert(rank);
        }
        let mut specials_by_len: Vec<(String, u32)> = tokens
            .iter()
            .zip(&special)
            .enumerate()
            .filter(|(_, (t, s))| **s && !t.is_empty())
            .filter_map(|(i, (t, _))| Some((t.clone(), u32::try_from(i).ok()?)))
            .collect();
        specials_by_len.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let splits = splits
            .iter()
            .map(|p| {
                Regex::new(p).map_err(|e| {
                    InferenceError::UnsupportedModel(format!("pre-tokenizer pattern {p:?}: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let byte_enc = byte_to_unicode();
        let byte_dec = byte_enc
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        // Like llama.cpp, control tokens that end a turn in known templates end generation.
        for name in [
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<end_of_turn>",
        ] {
            if let Some(&id) = vocab.get(name) {
                if special.get(id as usize).copied().unwrap_or(false) && !eog.contains(&id) {
                    eog.push(id);
                }
            }
        }
        if eog.is_empty() {
            return Err(InferenceError::BadModel(
                "the tokenizer names no end-of-generation token".into(),
            ));
        }
        let n = tokens.len();
        if eog.iter().chain(&bos).any(|&id| id as usize >= n) {
            return Err(InferenceError::BadModel(
                "an end-of-generation or BOS token id is out of range".into(),
            ));
        }
        Ok(Self {
            vocab,
            tokens,
            special,
            specials_by_len,
            merges,
            splits,
            nfc,
            ignore_merges,
            byte_enc,
            byte_dec,
            eog,
            bos,
            add_bos,
            pre,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The pre-tokenizer in use (`tokenizer.ggml.pre`, or the `tokenizer.json` pre-tokenizers).
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre
    }

    /// Whether a token ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The BOS token, when the model wants one prepended.
    pub fn bos_to_add(&self) -> Option<u32> {
        self.add_bos.then_some(self.bos).flatten()
    }

    /// Text of a token as written in the vocabulary (byte-level encoded for ordinary tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Encode text. With `parse_special`, special tokens written in the text become their ids
    /// (what a rendered chat template needs); otherwise they are tokenized as plain text.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if !parse_special {
            self.encode_plain(text, &mut out);
            return out;
        }
        let mut rest = text;
        while !rest.is_empty() {
            // The earliest special token in `rest` (longest wins at the same position).
            let mut found: Option<(usize, &str, u32)> = None;
            for (s, id) in &self.specials_by_len {
                if let Some(pos) = rest.find(s.as_str()) {
                    if found.is_none_or(|(p, _, _)| pos < p) {
                        found = Some((pos, s.as_str(), *id));
                    }
                }
            }
            match found {
                Some((pos, s, id)) => {
                    let (before, after) = rest.split_at(pos);
                    self.encode_plain(before, &mut out);
                    out.push(id);
                    rest = after.get(s.len()..).unwrap_or("");
                }
                None => {
                    self.encode_plain(rest, &mut out);
                    rest = "";
                }
            }
        }
        out
    }

    fn pre_tokenize<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.splits {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece).flatten() {
                    if let Some(gap) = piece.get(last..m.start()).filter(|g| !g.is_empty()) {
                        next.push(gap);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if let Some(tail) = piece.get(last..).filter(|t| !t.is_empty()) {
                    next.push(tail);
                }
            }
            pieces = next;
        }
        pieces
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        let normalized;
        let text = if self.nfc {
            normalized = text.nfc().collect::<String>();
            normalized.as_str()
        } else {
            text
        };
        for piece in self.pre_tokenize(text) {
            if self.ignore_merges {
                let whole: String = piece
                    .bytes()
                    .filter_map(|b| self.byte_enc.get(usize::from(b)))
                    .collect();
                if let Some(&id) = self.vocab.get(&whole) {
                    out.push(id);
                    continue;
                }
            }
            let mut symbols: Vec<String> = piece
                .bytes()
                .map(|b| {
                    self.byte_enc
                        .get(usize::from(b))
                        .copied()
                        .unwrap_or('\u{fffd}')
                        .to_string()
                })
                .collect();
            // Merge the lowest-ranked adjacent pair until none is in the merge table.
            loop {
                let mut best: Option<(u32, usize)> = None;
                for (i, pair) in symbols.windows(2).enumerate() {
                    if let [a, b] = pair {
                        if let Some(&rank) = self.merges.get(&(a.clone(), b.clone())) {
                            if best.is_none_or(|(r, _)| rank < r) {
                                best = Some((rank, i));
                            }
                        }
                    }
                }
                let Some((_, i)) = best else { break };
                let right = symbols.remove(i + 1);
                if let Some(left) = symbols.get_mut(i) {
                    left.push_str(&right);
                }
            }
            for s in symbols {
                match self.vocab.get(&s) {
                    Some(&id) => out.push(id),
                    // Not in the vocabulary: fall back to its single-byte tokens.
                    None => out.extend(s.chars().filter_map(|c| self.vocab.get(&c.to_string()))),
                }
            }
        }
    }

    /// The bytes a token stands for. Special tokens give their literal text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        if self.special.get(id as usize).copied().unwrap_or(false) {
            return t.as_bytes().to_vec();
        }
        t.chars()
            .map(|c| match self.byte_dec.get(&c) {
                Some(&b) => vec![b],
                None => c.to_string().into_bytes(),
            })
            .collect::<Vec<_>>()
            .concat()
    }

    /// Decode tokens to text (lossy for invalid UTF-8); special tokens give their literal text.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The GPT-2 split as the Hugging Face `ByteLevel` pre-tokenizer writes it (`use_regex`).
const HF_BYTE_LEVEL_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// What the files beside a `tokenizer.json` say about it (`tokenizer_config.json`,
/// `generation_config.json`, `config.json`).
#[derive(Debug, Clone, Default)]
pub struct HfTokenizerHints {
    /// Text of the BOS token.
    pub bos_token: Option<String>,
    /// Text of the EOS token.
    pub eos_token: Option<String>,
    /// Whether BOS is prepended (`add_bos_token`); `None`: as the post-processor says.
    pub add_bos_token: Option<bool>,
    /// Token ids that end generation (`eos_token_id`, one or a list).
    pub eos_ids: Vec<u32>,
}

fn hf_bad(what: impl std::fmt::Display) -> InferenceError {
    InferenceError::BadModel(format!("tokenizer.json: {what}"))
}

fn hf_unsupported(what: impl std::fmt::Display) -> InferenceError {
    InferenceError::UnsupportedModel(format!("tokenizer.json: {what}"))
}

fn json_type(v: &serde_json::Value) -> &str {
    v.get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

/// Whether a normalizer asks for NFC (and nothing we do not implement).
fn hf_normalizer(v: &serde_json::Value) -> Result<bool, InferenceError> {
    match json_type(v) {
        _ if v.is_null() => Ok(false),
        "NFC" => Ok(true),
        "Sequence" => {
            let mut nfc = false;
            for n in v
                .get("normalizers")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| hf_bad("normalizer Sequence without normalizers"))?
            {
                nfc |= hf_normalizer(n)?;
            }
            Ok(nfc)
        }
        other => Err(hf_unsupported(format!(
            "normalizer {other:?} is not supported (known: NFC)"
        ))),
    }
}

/// The split patterns of a pre-tokenizer, in order; `byte_level` is set when a `ByteLevel`
/// pre-tokenizer (the byte-to-character mapping our vocabulary lookup assumes) is present.
fn hf_pre_tokenizer(
    v: &serde_json::Value,
    out: &mut Vec<String>,
    names: &mut Vec<String>,
    byte_level: &mut bool,
) -> Result<(), InferenceError> {
    let flag = |key: &str| v.get(key).and_then(serde_json::Value::as_bool);
    let kind = json_type(v);
    match kind {
        "Sequence" => {
            for p in v
                .get("pretokenizers")
                .and_then(serde_json::Value::as_array)
                .ok_or_else(|| hf_bad("pre_tokenizer Sequence without pretokenizers"))?
            {
                hf_pre_tokenizer(p, out, names, byte_level)?;
            }
            return Ok(());
        }
        "ByteLevel" => {
            if flag("add_prefix_space") == Some(true) {
                return Err(hf_unsupported(
                    "ByteLevel with add_prefix_space is not supported",
                ));
            }
            if flag("use_regex") != Some(false) {
                out.push(HF_BYTE_LEVEL_SPLIT.to_owned());
            }
            *byte_level = true;
        }
        "Digits" => out.push(
            if flag("individual_digits") == Some(true) {
                r"\p{N}"
            } else {
                r"\p{N}+"
            }
            .to_owned(),
        ),
        "Split" => {
            let behavior = v
                .get("behavior")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            if behavior != "Isolated" || flag("invert") == Some(true) {
                return Err(hf_unsupported(format!(
                    "Split with behavior {behavior:?}{} is not supported (known: Isolated)",
                    if flag("invert") == Some(true) {
                        ", inverted"
                    } else {
                        ""
                    }
                )));
            }
            let pattern = v
                .get("pattern")
                .ok_or_else(|| hf_bad("Split without pattern"))?;
            if let Some(re) = pattern.get("Regex").and_then(serde_json::Value::as_str) {
                out.push(re.to_owned());
            } else if let Some(s) = pattern.get("String").and_then(serde_json::Value::as_str) {
                out.push(fancy_regex::escape(s).into_owned());
            } else {
                return Err(hf_bad("Split pattern is neither Regex nor String"));
            }
        }
        _ if v.is_null() => {}
        other => {
            return Err(hf_unsupported(format!(
            "pre-tokenizer {other:?} is not supported (known: ByteLevel, Split, Digits, Sequence)"
        )))
        }
    }
    if !v.is_null() {
        names.push(kind.to_owned());
    }
    Ok(())
}

/// A token text from `tokenizer_config.json` style values: a string or `{"content": ...}`.
pub(crate) fn token_content(v: &serde_json::Value) -> Option<String> {
    v.as_str()
        .or_else(|| v.get("content").and_then(serde_json::Value::as_str))
        .map(str::to_owned)
}

impl Tokenizer {
    /// Build the tokenizer a Hugging Face `tokenizer.json` describes: a byte-level BPE model, its
    /// added tokens, and the normalizer and pre-tokenizer mapped onto the same splitting this
    /// tokenizer does for GGUF files. What we do not implement is refused, never approximated.
    pub fn from_hf(json: &[u8], hints: &HfTokenizerHints) -> Result<Self, InferenceError> {
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| hf_bad(format!("not JSON: {e}")))?;
        let null = serde_json::Value::Null;
        let model = v.get("model").ok_or_else(|| hf_bad("no model"))?;
        if json_type(model) != "BPE" {
            return Err(hf_unsupported(format!(
                "model type {:?}: only byte-level BPE is supported",
                json_type(model)
            )));
        }
        if model
            .get("byte_fallback")
            .and_then(serde_json::Value::as_bool)
            == Some(true)
        {
            return Err(hf_unsupported(
                "BPE with byte_fallback (SentencePiece style) is not supported",
            ));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model
                .get(key)
                .and_then(serde_json::Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                return Err(hf_unsupported(format!("BPE {key} is not supported")));
            }
        }
        if model
            .get("dropout")
            .and_then(serde_json::Value::as_f64)
            .is_some_and(|d| d > 0.0)
        {
            return Err(hf_unsupported("BPE dropout is not supported"));
        }
        let decoder = v.get("decoder").unwrap_or(&null);
        let decoder_ok = match json_type(decoder) {
            "ByteLevel" => true,
            "Sequence" => decoder
                .get("decoders")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|d| d.len() == 1 && d.iter().all(|x| json_type(x) == "ByteLevel")),
            _ => false,
        };
        if !decoder_ok {
            return Err(hf_unsupported(format!(
                "decoder {:?}: only ByteLevel is supported",
                json_type(decoder)
            )));
        }

        // Vocabulary, then added tokens over it.
        let vocab = model
            .get("vocab")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| hf_bad("model.vocab is not an object"))?;
        let added = v
            .get("added_tokens")
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Ids are dense: an id at or past the number of entries means some id has no text. It is
        // refused before anything is allocated for it.
        let entries = vocab.len() + added.len();
        let mut by_id: Vec<Option<(String, bool)>> = Vec::new();
        let mut place = |id: u64, text: String, special: bool| -> Result<(), InferenceError> {
            let id = usize::try_from(id)
                .ok()
                .filter(|&i| i < entries)
                .ok_or_else(|| {
                    hf_bad(format!(
                        "token id {id} is beyond the {entries} tokens given, so some id has no text"
                    ))
                })?;
            if by_id.len() <= id {
                by_id.resize(id + 1, None);
            }
            if let Some(slot) = by_id.get_mut(id) {
                *slot = Some((text, special));
            }
            Ok(())
        };
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| hf_bad(format!("vocab entry {text:?} has no integer id")))?;
            place(id, text.clone(), false)?;
        }
        for t in added {
            let id = t
                .get("id")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| hf_bad("added token without id"))?;
            let content = t
                .get("content")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| hf_bad(format!("added token {id} without content")))?;
            // Matching that strips neighbouring spaces or needs word boundaries is not implemented.
            for flag in ["lstrip", "rstrip", "single_word"] {
                if t.get(flag).and_then(serde_json::Value::as_bool) == Some(true) {
                    return Err(hf_unsupported(format!(
                        "added token {content:?} with {flag} is not supported"
                    )));
                }
            }
            // Added tokens, special or not, are matched whole in the input and decoded literally.
            place(id, content.to_owned(), true)?;
        }
        let mut tokens = Vec::with_capacity(by_id.len());
        let mut special = Vec::with_capacity(by_id.len());
        for (id, slot) in by_id.into_iter().enumerate() {
            let (t, s) = slot.ok_or_else(|| hf_bad(format!("token id {id} has no text")))?;
            tokens.push(t);
            special.push(s);
        }

        let merges = model
            .get("merges")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| hf_bad("model.merges is not an array"))?
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                let pair = match m {
                    serde_json::Value::String(s) => {
                        s.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned()))
                    }
                    serde_json::Value::Array(ab) => match ab.as_slice() {
                        [serde_json::Value::String(a), serde_json::Value::String(b)] => {
                            Some((a.clone(), b.clone()))
                        }
                        _ => None,
                    },
                    _ => None,
                };
                pair.ok_or_else(|| hf_bad(format!("merge {rank} is not a pair")))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let nfc = hf_normalizer(v.get("normalizer").unwrap_or(&null))?;
        let (mut splits, mut names, mut byte_level) = (Vec::new(), Vec::new(), false);
        hf_pre_tokenizer(
            v.get("pre_tokenizer").unwrap_or(&null),
            &mut splits,
            &mut names,
            &mut byte_level,
        )?;
        if !byte_level {
            return Err(hf_unsupported(
                "no ByteLevel pre-tokenizer: only byte-level BPE is supported",
            ));
        }

        let id_of = |text: &str| -> Option<u32> {
            tokens
                .iter()
                .position(|t| t == text)
                .and_then(|i| u32::try_from(i).ok())
        };
        // A post-processor that puts a special token before every sequence adds BOS.
        let post = v.get("post_processor").unwrap_or(&null);
        let post_bos = (json_type(post) == "TemplateProcessing")
            .then(|| {
                post.get("single")?
                    .as_array()?
                    .first()?
                    .get("SpecialToken")?
                    .get("id")?
                    .as_str()
                    .and_then(id_of)
            })
            .flatten();
        let bos = hints.bos_token.as_deref().and_then(id_of).or(post_bos);
        let add_bos = hints.add_bos_token.unwrap_or(post_bos.is_some());
        let mut eog = hints.eos_ids.clone();
        if let Some(id) = hints.eos_token.as_deref().and_then(id_of) {
            if !eog.contains(&id) {
                eog.push(id);
            }
        }
        Self::build(Parts {
            tokens,
            special,
            merges,
            splits,
            nfc,
            ignore_merges: model
                .get("ignore_merges")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            eog,
            bos,
            add_bos,
            pre: format!("tokenizer.json: {}", names.join("+")),
        })
    }
}

/// Turns a stream of tokens into text pieces, holding back bytes of an unfinished UTF-8
/// character until the token that completes it arrives.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Add a token's bytes; returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_owned();
                self.pending.clear();
                s
            }
            Err(e) => {
                let valid = e.valid_up_to();
                // An invalid sequence (not merely unfinished) is replaced, not held forever.
                let cut = if e.error_len().is_some() {
                    self.pending.len()
                } else {
                    valid
                };
                let head: Vec<u8> = self.pending.drain(..cut).collect();
                String::from_utf8_lossy(&head).into_owned()
            }
        }
    }

    /// Whatever is left at the end (replaced if it is not valid UTF-8).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_with_gpt2_anchors() {
        let t = byte_to_unicode();
        let mut seen: Vec<char> = t.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
    }

    #[test]
    fn stream_decoder_holds_split_characters() {
        let mut d = StreamDecoder::default();
        let snow = "é☃".as_bytes();
        assert_eq!(d.push(&snow[..1]), "");
        assert_eq!(d.push(&snow[1..3]), "é");
        assert_eq!(d.push(&snow[3..]), "☃");
        assert_eq!(d.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(d.push(&[0xe2]), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }

    #[test]
    fn unknown_pre_tokenizer_is_refused() {
        assert!(pre_tokenizer_patterns("mystery").is_err());
        assert_eq!(
            pre_tokenizer_patterns("smollm").map(|p| p.len()).ok(),
            Some(2)
        );
    }

    fn tiny_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut vocab: serde_json::Map<String, serde_json::Value> = byte_to_unicode()
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i.into()))
            .collect();
        vocab.insert("ab".into(), 257.into());
        let mut v = serde_json::json!({
            "added_tokens": [{"id": 256, "content": "<|im_end|>", "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": [["a", "b"]]}
        });
        edit(&mut v);
        v.to_string().into_bytes()
    }

    #[test]
    fn tokenizer_json_features_we_do_not_implement_are_refused() {
        let hints = HfTokenizerHints::default();
        let ok = Tokenizer::from_hf(&tiny_json(|_| {}), &hints).expect("plain byte-level");
        assert_eq!(ok.encode("ab<|im_end|>", true), vec![257, 256]);
        assert!(ok.is_eog(256) && ok.bos_to_add().is_none());
        type Edit = (&'static str, fn(&mut serde_json::Value));
        let refused: [Edit; 9] = [
            ("lstrip", |v| v["added_tokens"][0]["lstrip"] = true.into()),
            ("byte_fallback", |v| {
                v["model"]["byte_fallback"] = true.into()
            }),
            ("dropout", |v| v["model"]["dropout"] = 0.1.into()),
            ("WordPiece", |v| v["model"]["type"] = "WordPiece".into()),
            ("decoder", |v| {
                v["decoder"] = serde_json::json!({"type": "Metaspace"})
            }),
            ("add_prefix_space", |v| {
                v["pre_tokenizer"]["add_prefix_space"] = true.into()
            }),
            ("Removed", |v| {
                v["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": "x"}, "behavior": "Removed",
                     "invert": false},
                    {"type": "ByteLevel", "use_regex": false}]})
            }),
            ("NFKC", |v| {
                v["normalizer"] = serde_json::json!({"type": "NFKC"})
            }),
            ("ByteLevel", |v| {
                v["pre_tokenizer"] = serde_json::json!({"type": "Digits",
                                                         "individual_digits": true})
            }),
        ];
        for (want, edit) in refused {
            let e = Tokenizer::from_hf(&tiny_json(edit), &hints)
                .expect_err(want)
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // A hole in the ids is a malformed file.
        let e = Tokenizer::from_hf(
            &tiny_json(|v| v["added_tokens"][0]["id"] = 300.into()),
            &hints,
        )
        .expect_err("hole")
        .to_string();
        assert!(e.contains("has no text"), "{e}");
    }
}
