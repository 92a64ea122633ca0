//! `chrysalis attest` and `chrysalis chat`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrysalis_attestation::Platform;
use chrysalis_client::inputs::{load_policy, now, UsageError};
use chrysalis_client::remote::{self, AnswerPiece};
use chrysalis_client::report::{rejection_json, verdict_json, verdict_text, SIMULATED_WARNING};

fn runtime() -> Result<tokio::runtime::Runtime, UsageError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError {
            path: "runtime".into(),
            reason: e.to_string(),
        })
}

/// `chrysalis attest URL`.
pub fn attest(
    url: String,
    policy: &Option<PathBuf>,
    allow_simulated: bool,
    json: bool,
    write_policy: Option<PathBuf>,
) -> Result<ExitCode, UsageError> {
    let policy = load_policy(policy.as_deref(), allow_simulated)?;
    let rt = runtime()?;
    let now = now();
    let result = rt.block_on(async {
        let mut conn = remote::connect(&url, &policy, now).await?;
        remote::attest_fresh(&mut conn, &policy, now).await
    });
    match result {
        Ok(att) => {
            if att.platform() == Platform::Simulated {
                eprintln!("WARNING: {SIMULATED_WARNING}");
            }
            let ok = Ok(att.verified.clone());
            if let Some(path) = &write_policy {
                let text = chrysalis_client::report::pinned_policy(&att.verified, &url);
                std::fs::write(path, text).map_err(|e| UsageError {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                eprintln!(
                    "wrote {}: it pins exactly what this enclave measured now (trust on first use: \
                     compare it with the image's manifest before relying on it)",
                    path.display()
                );
            }
            if json {
                let mut v = verdict_json(Some(att.platform()), &ok);
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "enclave".into(),
                        serde_json::json!({
                            "url": url,
                            "hpke_public_key": hex::encode(att.hpke_public_key),
                            "gpu_status": att.gpu_status().as_str_name(),
                            "config": att.config,
                        }),
                    );
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!(
                    "{}",
                    verdict_text(Some(att.platform()), &ok, std::io::stdout().is_terminal())
                );
                println!("enclave:     {url}");
                println!("hpke key:    {}", hex::encode(att.hpke_public_key));
                println!("gpu:         {}", att.gpu_status().as_str_name());
                if let Some(models) = att.config.get("models").and_then(|m| m.as_array()) {
                    for m in models {
                        println!(
                            "model:       {} sha256 {}",
                            m.get("name").and_then(|v| v.as_str()).unwrap_or("?"),
                            m.get("sha256").and_then(|v| v.as_str()).unwrap_or("?")
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rejection_json(None, &e.to_string()))
                        .unwrap_or_default()
                );
            } else {
                println!("REJECTED: {e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// Options of `chat`.
#[derive(Debug)]
pub struct ChatOptions {
    pub url: String,
    pub prompt: String,
    pub policy: Option<PathBuf>,
    pub allow_simulated: bool,
    pub max_tokens: usize,
    pub model: String,
    pub temperature: f64,
    pub system: Option<String>,
}

/// `chrysalis chat URL PROMPT`.
pub fn chat(o: ChatOptions) -> Result<ExitCode, UsageError> {
    let policy = load_policy(o.policy.as_deref(), o.allow_simulated)?;
    let rt = runtime()?;
    let now = now();
    let mut messages = Vec::new();
    if let Some(s) = &o.system {
        messages.push(serde_json::json!({"role": "system", "content": s}));
    }
    messages.push(serde_json::json!({"role": "user", "content": o.prompt}));
    let body = serde_json::json!({
        "model": o.model,
        "messages": messages,
        "params": {"temperature": o.temperature, "max_tokens": o.max_tokens, "top_p": 1.0, "top_k": 0, "seed": 0, "stop": []},
    });
    let result = rt.block_on(async {
        let mut conn = remote::connect(&o.url, &policy, now).await?;
        if conn.attestation.platform() == Platform::Simulated {
            eprintln!("WARNING: {SIMULATED_WARNING}");
        }
        let mut out = std::io::stdout().lock();
        remote::generate(&mut conn, &body, |p| {
            if let AnswerPiece::Text(t) = p {
                let _ = out.write_all(t.as_bytes());
                let _ = out.flush();
            }
        })
        .await
    });
    match result {
        Ok(_) => {
            println!();
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!();
            eprintln!("chrysalis chat: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `chrysalis gateway`: verify at start (and before the first request after any key change or
/// expiry), then serve the OpenAI-compatible API until Ctrl-C.
pub fn gateway(
    listen: std::net::SocketAddr,
    upstream: String,
    policy: &Option<PathBuf>,
    allow_simulated: bool,
    session_ttl: u64,
) -> Result<ExitCode, UsageError> {
    use chrysalis_client::gateway::{Gateway, GatewayConfig};
    remote::parse_url(&upstream).map_err(|e| UsageError {
        path: upstream.clone(),
        reason: e.to_string(),
    })?;
    let policy = load_policy(policy.as_deref(), allow_simulated)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| UsageError {
            path: "runtime".into(),
            reason: e.to_string(),
        })?;
    rt.block_on(async move {
        let g = Gateway::new(GatewayConfig {
            upstream: upstream.clone(),
            policy,
            session_ttl: std::time::Duration::from_secs(session_ttl.max(1)),
            now: None,
        });
        match g.verify().await {
            Ok(()) => eprintln!("gateway: {upstream} verified against the policy"),
            Err(e) => eprintln!(
                "gateway: WARNING: {upstream} is not verified ({e}); every request will be refused \
                 until it verifies"
            ),
        }
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| UsageError {
            path: listen.to_string(),
            reason: e.to_string(),
        })?;
        println!(
            "chrysalis gateway on http://{} (OpenAI-compatible: /v1/models, /v1/chat/completions, /v1/completions; /v1/attestation)",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        chrysalis_client::gateway::serve(listener, g, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| UsageError {
            path: listen.to_string(),
            reason: e.to_string(),
        })?;
        Ok(ExitCode::SUCCESS)
    })
}
