//! `chrysalis gateway`: an OpenAI-compatible HTTP server on the developer's machine that
//! verifies the enclave before any prompt leaves it.
//!
//! Every request needs a verified session: the enclave's evidence checked against the policy in
//! the RA-TLS handshake, fresh. A session is re-verified when it expires (`session_ttl`) and
//! dropped when the enclave's key changes (its connections then fail), so a prompt is never
//! sealed to unverified or expired evidence. Prompts are sealed (HPKE) to the attested key; the
//! gateway never logs them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrysalis_attestation::{Platform, Policy, Timestamp};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::remote::{self, AnswerPiece, Attested, RemoteError};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// Gateway settings.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The enclave or host relay: `https://HOST:PORT`.
    pub upstream: String,
    /// The policy every session is verified against.
    pub policy: Policy,
    /// How long a verification holds before the next request re-verifies.
    pub session_ttl: Duration,
    /// Clock (tests pin it); `None` reads the wall clock.
    pub now: Option<Timestamp>,
    /// Where endorsements come from when the enclave's bundle lacks them.
    pub collateral: crate::collateral::CollateralSource,
}

struct Session {
    /// The verified connection, its sealing session (one HPKE context for all requests until
    /// the next verification) included; cloned for each request.
    attested: Attested,
    verified_at: Instant,
    verified_at_utc: Timestamp,
}

/// Shared gateway state.
pub struct Gateway {
    config: GatewayConfig,
    session: Mutex<Option<Session>>,
    /// The last verification failure, for `/v1/attestation`.
    last_failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("upstream", &self.config.upstream)
            .finish_non_exhaustive()
    }
}

/// An OpenAI-style error response.
fn error(status: StatusCode, kind: &str, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"message": message.into(), "type": kind, "param": null, "code": code}})
            .to_string(),
    )
        .into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "invalid_request",
        message,
    )
}

fn upstream_error(e: &RemoteError) -> Response {
    match e {
        RemoteError::Rejected(reason) => error(
            StatusCode::BAD_GATEWAY,
            "attestation_error",
            "enclave_not_verified",
            format!(
                "the enclave failed verification against the policy; nothing was sent: {reason}"
            ),
        ),
        RemoteError::Connect { .. } | RemoteError::Url(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_error",
            "upstream_unavailable",
            format!("the enclave cannot be reached: {e}"),
        ),
        RemoteError::Status(m) if m.contains("busy") || m.contains("ResourceExhausted") => error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "enclave_busy",
            "the enclave is busy; retry later",
        ),
        other => error(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_failed",
            format!("the enclave's answer failed: {other}"),
        ),
    }
}

impl Gateway {
    /// A gateway; nothing is contacted until [`Gateway::verify`] or a request.
    pub fn new(config: GatewayConfig) -> Arc<Self> {
        Arc::new(Gateway {
            config,
            session: Mutex::new(None),
            last_failure: Mutex::new(None),
        })
    }

    fn now(&self) -> Timestamp {
        self.config.now.unwrap_or_else(crate::inputs::now)
    }

    /// A verified session: the current one while it holds, else a new verification (RA-TLS
    /// handshake and fresh nonce-bound evidence).
    async fn session(&self) -> Result<Attested, RemoteError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref() {
            if s.verified_at.elapsed() < self.config.session_ttl {
                return Ok(s.attested.clone());
            }
            tracing::info!(target: "chrysalis::gateway", "verification expired; verifying again");
        }
        *guard = None;
        let now = self.now();
        let result = async {
            let mut a = remote::connect_with(
                &self.config.upstream,
                &self.config.policy,
                now,
                &self.config.collateral,
            )
            .await?;
            let fresh = remote::attest_fresh(&mut a, &self.config.policy, now).await?;
            a.attestation = fresh;
            Ok::<_, RemoteError>(a)
        }
        .await;
        match result {
            Ok(a) => {
                if a.attestation.platform() == Platform::Simulated {
                    tracing::warn!(target: "chrysalis::gateway", "{}", crate::report::SIMULATED_WARNING);
                }
                tracing::info!(target: "chrysalis::gateway", platform = %a.attestation.platform(), "enclave verified");
                *self.last_failure.lock().await = None;
                *guard = Some(Session {
                    attested: a.clone(),
                    verified_at: Instant::now(),
                    verified_at_utc: now,
                });
                Ok(a)
            }
            Err(e) => {
                tracing::warn!(target: "chrysalis::gateway", "verification failed: {e}");
                *self.last_failure.lock().await = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Verify now (at start).
    pub async fn verify(&self) -> Result<(), RemoteError> {
        self.session().await.map(|_| ())
    }

    async fn forget(&self) {
        *self.session.lock().await = None;
    }
}

/// The router.
pub fn router(g: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/attestation", get(attestation))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "unknown_url",
                "no such endpoint",
            )
        })
        .with_state(g)
}

async fn models(State(g): State<Arc<Gateway>>) -> Response {
    let mut a = match g.session().await {
        Ok(a) => a,
        Err(e) => return upstream_error(&e),
    };
    match a
        .client
        .list_models(chrysalis_proto::ListModelsRequest {})
        .await
    {
        Ok(r) => {
            let data: Vec<Value> = r
                .into_inner()
                .models
                .iter()
                .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": "chrysalis-enclave", "sha256": hex::encode(&m.sha256), "context_length": m.context_length}))
                .collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(s) => {
            g.forget().await;
            upstream_error(&RemoteError::Status(s.message().to_string()))
        }
    }
}

async fn attestation(State(g): State<Arc<Gateway>>) -> Response {
    let s = g.session.lock().await;
    let failure = g.last_failure.lock().await.clone();
    match s.as_ref() {
        Some(s) => {
            let platform = s.attested.attestation.platform();
            Json(json!({
                "verified": true,
                "upstream": g.config.upstream,
                "platform": platform.to_string(),
                "simulated_not_confidential": platform == Platform::Simulated,
                "verdict": serde_json::to_value(&s.attested.attestation.verified).unwrap_or(Value::Null),
                "verified_at": s.verified_at_utc.to_rfc3339(),
                "reverify_after_s": g.config.session_ttl.saturating_sub(s.verified_at.elapsed()).as_secs(),
                "hpke_public_key": hex::encode(s.attested.attestation.hpke_public_key),
                "config": s.attested.attestation.config,
            }))
            .into_response()
        }
        None => {
            Json(json!({"verified": false, "upstream": g.config.upstream, "last_failure": failure}))
                .into_response()
        }
    }
}

async fn read_json(req: Request) -> Result<Value, Response> {
    let bytes: Bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                format!("the request body is over {MAX_BODY} bytes"),
            )
        })?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

/// An OpenAI request turned into the enclave's, checked.
struct Parsed {
    model: String,
    body: Value,
    stream: bool,
    include_usage: bool,
}

fn text_of(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        // [{"type": "text", "text": "..."}]
        Value::Array(parts) => parts
            .iter()
            .map(|p| {
                (p.get("type").and_then(Value::as_str) == Some("text"))
                    .then(|| p.get("text").and_then(Value::as_str).map(str::to_owned))
                    .flatten()
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        _ => None,
    }
}

// The error is the HTTP response itself, sent as is on the rare bad request: boxing it would only
// add an allocation.
#[allow(clippy::result_large_err)]
fn parse(v: &Value, messages: Vec<Value>) -> Result<Parsed, Response> {
    let model = match v.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(bad_request("model: a non-empty string")),
        None => return Err(bad_request("missing field: model")),
    };
    let num = |k: &str| v.get(k).filter(|x| !x.is_null());
    let temperature = match num("temperature") {
        None => 1.0,
        Some(t) => t
            .as_f64()
            .filter(|t| (0.0..=2.0).contains(t))
            .ok_or_else(|| bad_request("temperature: a number from 0 to 2"))?,
    };
    let top_p = match num("top_p") {
        None => 1.0,
        Some(t) => t
            .as_f64()
            .filter(|t| *t > 0.0 && *t <= 1.0)
            .ok_or_else(|| bad_request("top_p: a number in (0, 1]"))?,
    };
    let max_tokens = match num("max_completion_tokens").or_else(|| num("max_tokens")) {
        None => 256,
        Some(t) => t
            .as_u64()
            .filter(|t| (1..=32768).contains(t))
            .ok_or_else(|| bad_request("max_tokens: an integer from 1 to 32768"))?
            as usize,
    };
    let seed = match num("seed") {
        None => 0,
        Some(s) => s
            .as_u64()
            .ok_or_else(|| bad_request("seed: a non-negative integer"))?,
    };
    let stop: Vec<String> = match num("stop") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 4 => a
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| bad_request("stop: a string or up to 4 strings"))?,
        Some(_) => return Err(bad_request("stop: a string or up to 4 strings")),
    };
    if let Some(n) = num("n") {
        if n.as_u64() != Some(1) {
            return Err(bad_request("n: only 1 is supported"));
        }
    }
    let stream = match num("stream") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_request("stream: true or false")),
    };
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Parsed {
        body: json!({
            "model": model,
            "messages": messages,
            "params": {"temperature": temperature, "top_p": top_p, "top_k": 0, "seed": seed, "max_tokens": max_tokens, "stop": stop},
        }),
        model,
        stream,
        include_usage,
    })
}

#[allow(clippy::result_large_err)] // as `parse`
fn chat_messages(v: &Value) -> Result<Vec<Value>, Response> {
    let msgs = v
        .get("messages")
        .ok_or_else(|| bad_request("missing field: messages"))?
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad_request("messages: a non-empty array"))?;
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("");
            let role = match role {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(bad_request(format!(
                        "messages[{i}].role: system, developer, user or assistant, not {other:?}"
                    )))
                }
            };
            let content = m
                .get("content")
                .and_then(text_of)
                .ok_or_else(|| bad_request(format!("messages[{i}].content: text")))?;
            Ok(json!({"role": role, "content": content}))
        })
        .collect()
}

#[allow(clippy::result_large_err)] // as `parse`
async fn chat_completions(State(g): State<Arc<Gateway>>, req: Request) -> Response {
    let v = match read_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let parsed = match chat_messages(&v).and_then(|m| parse(&v, m)) {
        Ok(p) => p,
        Err(r) => return r,
    };
    run(g, parsed, Kind::Chat).await
}

async fn completions(State(g): State<Arc<Gateway>>, req: Request) -> Response {
    let v = match read_json(req).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    // The enclave serves chat models: a completion prompt is one user message.
    let prompt = match v.get("prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a.first().is_some_and(Value::is_string) => {
            a.first().and_then(Value::as_str).unwrap_or("").to_owned()
        }
        Some(_) => return bad_request("prompt: a string (one prompt per request)"),
        None => return bad_request("missing field: prompt"),
    };
    let parsed = match parse(&v, vec![json!({"role": "user", "content": prompt})]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    run(g, parsed, Kind::Completion).await
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

fn created() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(kind: Kind) -> String {
    let mut b = [0u8; 12];
    let _ = rand_core::TryRngCore::try_fill_bytes(&mut rand_core::OsRng, &mut b);
    format!(
        "{}-{}",
        if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        },
        hex::encode(b)
    )
}

fn usage_json(u: &Value) -> Value {
    let p = u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0);
    let c = u
        .get("completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

fn finish_reason(u: &Value) -> String {
    u.get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| "stop".into())
}

/// The model must be one the enclave measured: its names are in the attested configuration,
/// so no extra round trip is needed per request.
#[allow(clippy::result_large_err)] // as `parse`
fn check_model(a: &Attested, model: &str) -> Result<(), Response> {
    let names: Vec<&str> = a
        .attestation
        .config
        .get("models")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    if names.contains(&model) {
        Ok(())
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!(
                "the model {model:?} does not exist in this enclave (GET /v1/models lists: {})",
                names.join(", ")
            ),
        ))
    }
}

async fn run(g: Arc<Gateway>, p: Parsed, kind: Kind) -> Response {
    let mut a = match g.session().await {
        Ok(a) => a,
        Err(e) => return upstream_error(&e),
    };
    if let Err(r) = check_model(&a, &p.model) {
        return r;
    }
    let id = request_id(kind);
    let model = p.model.clone();
    if !p.stream {
        let mut text = String::new();
        let result = remote::generate(&mut a, &p.body, |piece| {
            if let AnswerPiece::Text(t) = piece {
                text.push_str(t);
            }
        })
        .await;
        return match result {
            Ok(u) => {
                let body = match kind {
                    Kind::Chat => json!({
                        "id": id, "object": "chat.completion", "created": created(), "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason(&u), "logprobs": null}],
                        "usage": usage_json(&u),
                    }),
                    Kind::Completion => json!({
                        "id": id, "object": "text_completion", "created": created(), "model": model,
                        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason(&u), "logprobs": null}],
                        "usage": usage_json(&u),
                    }),
                };
                Json(body).into_response()
            }
            Err(e) => {
                g.forget().await;
                upstream_error(&e)
            }
        };
    }
    // Streaming: server-sent events in OpenAI's format, `[DONE]` only after the verified last
    // chunk. A failure mid-way sends an error event and no `[DONE]`.
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Bytes, std::convert::Infallible>>();
    let include_usage = p.include_usage;
    let body = p.body.clone();
    tokio::spawn(async move {
        let created = created();
        let event = |v: Value| Ok(Bytes::from(format!("data: {v}\n\n")));
        let chunk = |delta: Value, finish: Value| match kind {
            Kind::Chat => {
                json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
            }
            Kind::Completion => {
                json!({"id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish, "logprobs": null}]})
            }
        };
        if kind == Kind::Chat {
            let _ = tx.send(event(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )));
        }
        let result = remote::generate(&mut a, &body, |piece| {
            if let AnswerPiece::Text(t) = piece {
                let _ = tx.send(event(chunk(json!({"content": t}), Value::Null)));
            }
        })
        .await;
        match result {
            Ok(u) => {
                let _ = tx.send(event(chunk(json!({}), json!(finish_reason(&u)))));
                if include_usage {
                    let mut last = chunk(json!({}), Value::Null);
                    if let Some(o) = last.as_object_mut() {
                        o.insert("choices".into(), json!([]));
                        o.insert("usage".into(), usage_json(&u));
                    }
                    let _ = tx.send(event(last));
                }
                let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
            }
            Err(e) => {
                g.forget().await;
                let _ = tx.send(event(json!({"error": {"message": format!("the enclave's answer failed; it is incomplete: {e}"), "type": "upstream_error", "param": null, "code": "upstream_failed"}})));
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(Coalesce(rx)),
    )
        .into_response()
}

/// The events of a stream as body frames: whatever is ready when the connection asks goes out
/// as one frame (one write), so a burst of chunks from the enclave does not cost a write and a
/// wake-up each; a lone event goes out alone and at once.
struct Coalesce(tokio::sync::mpsc::UnboundedReceiver<Result<Bytes, std::convert::Infallible>>);

impl tokio_stream::Stream for Coalesce {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let first = match self.0.poll_recv(cx) {
            std::task::Poll::Ready(Some(Ok(b))) => b,
            other => return other,
        };
        let mut more = Vec::new();
        while let Ok(Ok(b)) = self.0.try_recv() {
            more.push(b);
        }
        if more.is_empty() {
            return std::task::Poll::Ready(Some(Ok(first)));
        }
        let mut out = Vec::with_capacity(first.len() + more.iter().map(Bytes::len).sum::<usize>());
        out.extend_from_slice(&first);
        for b in more {
            out.extend_from_slice(&b);
        }
        std::task::Poll::Ready(Some(Ok(Bytes::from(out))))
    }
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    g: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Server-sent events are small writes: send each at once.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(g))
        .with_graceful_shutdown(shutdown)
        .await
}
