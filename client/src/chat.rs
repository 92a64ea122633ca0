//! Chat with a verified enclave: one prompt, or a conversation read line by line
//! (`chrysalis chat` without a prompt).
//!
//! The conversation is verified before its first turn and again whenever the verdict expires or
//! the connection is lost (a restarted enclave has new keys: the RA-TLS handshake verifies them
//! before anything is sent). The history stays in this process and travels sealed with each
//! turn; a turn that fails is dropped from it.

use std::io::{BufRead, Write};

use chrysalis_attestation::Policy;
use serde_json::{json, Value};

use crate::collateral::CollateralSource;
use crate::inputs::now;
use crate::remote::{self, AnswerPiece, Attested, RemoteError};
use crate::report::verdict_text;

/// What every turn is sent with.
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// The enclave or relay, `https://HOST:PORT`.
    pub url: String,
    /// The policy the enclave must meet.
    pub policy: Policy,
    /// Model name (empty: the enclave's default).
    pub model: String,
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
    /// Most tokens per answer.
    pub max_tokens: usize,
    /// A system message at the start of every conversation.
    pub system: Option<String>,
    /// Where endorsements come from when the enclave's bundle lacks them.
    pub collateral: CollateralSource,
}

impl ChatSettings {
    /// The conversation before its first turn: the system message, if any.
    pub fn first_messages(&self) -> Vec<Value> {
        self.system
            .iter()
            .map(|s| json!({"role": "system", "content": s}))
            .collect()
    }

    /// The request body (sealed before it leaves) for `messages`.
    pub fn body(&self, messages: &[Value]) -> Value {
        json!({
            "model": self.model,
            "messages": messages,
            "params": {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": 1.0, "top_k": 0, "seed": 0, "stop": []},
        })
    }
}

/// How the conversation is shown.
#[derive(Debug, Clone, Copy, Default)]
pub struct Display {
    /// Print `you> ` / `enclave> ` prompts (at a terminal).
    pub prompts: bool,
    /// Colour in the verdict.
    pub colour: bool,
}

/// How a conversation ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Turns answered completely and verified.
    pub answered: usize,
    /// Turns that failed after verification (the error was shown).
    pub failed: usize,
    /// Verification failed: nothing was sent, the conversation stopped.
    pub rejected: Option<String>,
}

/// The commands a conversation understands.
pub const HELP: &str = "commands: /reset (forget the conversation), /attest (show what was verified), /exit (or Ctrl-D)";

fn show_verdict(err: &mut impl Write, a: &Attested, colour: bool) -> std::io::Result<()> {
    write!(
        err,
        "{}",
        verdict_text(
            Some(a.attestation.platform()),
            &Ok(a.attestation.verified.clone()),
            colour
        )
    )
}

/// Hold a conversation: each line of `input` is a turn (or a command), answers stream to
/// `out`, verdicts, notices and errors go to `err`.
pub async fn converse(
    settings: &ChatSettings,
    input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
    display: Display,
) -> std::io::Result<Outcome> {
    let mut outcome = Outcome::default();
    let mut session: Option<Attested> = None;
    let mut messages = settings.first_messages();
    if display.prompts {
        writeln!(err, "chrysalis chat with {} ({HELP})", settings.url)?;
    }
    let mut lines = input.lines();
    loop {
        if display.prompts {
            write!(err, "you> ")?;
            err.flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" => break,
            "/help" => {
                writeln!(err, "{HELP}")?;
                continue;
            }
            "/reset" => {
                messages = settings.first_messages();
                writeln!(err, "(conversation cleared)")?;
                continue;
            }
            _ => {}
        }
        let expired = session
            .as_ref()
            .is_none_or(|s| now() >= s.attestation.verified.expires_at());
        if expired {
            match remote::connect_with(&settings.url, &settings.policy, now(), &settings.collateral)
                .await
            {
                Ok(conn) => {
                    // The verdict carries the simulator's warning when it applies.
                    show_verdict(err, &conn, display.colour)?;
                    session = Some(conn);
                }
                Err(e) => {
                    writeln!(err, "REJECTED: {e}")?;
                    writeln!(
                        err,
                        "nothing was sent; fix the policy or the enclave, then try again"
                    )?;
                    outcome.rejected = Some(e.to_string());
                    return Ok(outcome);
                }
            }
        }
        let Some(conn) = session.as_mut() else {
            continue;
        };
        if text == "/attest" {
            show_verdict(err, conn, display.colour)?;
            continue;
        }
        messages.push(json!({"role": "user", "content": text}));
        let body = settings.body(&messages);
        let mut answer = String::new();
        if display.prompts {
            write!(out, "enclave> ")?;
        }
        let result = remote::generate(conn, &body, |p| {
            if let AnswerPiece::Text(t) = p {
                answer.push_str(t);
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
        })
        .await;
        drop(body);
        writeln!(out)?;
        match result {
            Ok(_) => {
                outcome.answered += 1;
                messages.push(json!({"role": "assistant", "content": answer}));
            }
            Err(e) => {
                messages.pop();
                outcome.failed += 1;
                writeln!(err, "chrysalis chat: {e}")?;
                match e {
                    RemoteError::Status(m) if m.contains("context") => writeln!(
                        err,
                        "(the conversation no longer fits the model's context: /reset to start again)"
                    )?,
                    // The enclave answered with an error: the session is sound.
                    RemoteError::Status(_) => {}
                    // Transport or protocol failure: verify afresh before the next turn.
                    _ => session = None,
                }
            }
        }
    }
    Ok(outcome)
}
