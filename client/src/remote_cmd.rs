//! `chrysalis attest` and `chrysalis chat`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrysalis_attestation::Platform;
use chrysalis_client::chat::{converse, ChatSettings, Display};
use chrysalis_client::collateral::CollateralSource;
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
    collateral: CollateralSource,
    policy: &Option<PathBuf>,
    allow_simulated: bool,
    json: bool,
    write_policy: Option<PathBuf>,
) -> Result<ExitCode, UsageError> {
    let policy = load_policy(policy.as_deref(), allow_simulated)?;
    let rt = runtime()?;
    let now = now();
    let result = rt.block_on(async {
        let mut conn = remote::connect_with(&url, &policy, now, &collateral).await?;
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
                            "gpus": att.gpus.iter().map(|g| serde_json::json!({
                                "attestation_certificate": g.leaf_subject,
                                "driver_version": g.report.driver_version(),
                                "vbios_version": g.report.vbios_version(),
                                "fwid": hex::encode(g.fwid),
                                "measurements": g.report.measurements.iter()
                                    .map(|m| hex::encode(&m.value)).collect::<Vec<_>>(),
                            })).collect::<Vec<_>>(),
                            "config": att.config,
                        }),
                    );
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!(
                    "{}",
                    verdict_text(
                        Some(att.platform()),
                        &ok,
                        chrysalis_client::report::stdout_colour()
                    )
                );
                println!("enclave:     {url}");
                println!("hpke key:    {}", hex::encode(att.hpke_public_key));
                println!("gpu:         {}", att.gpu_status().as_str_name());
                for g in &att.gpus {
                    println!(
                        "             verified: {} (driver {}, VBIOS {}, {} measurements; \
                         not checked: revocation, NVIDIA reference measurements)",
                        g.leaf_subject,
                        g.report.driver_version().unwrap_or_default(),
                        g.report.vbios_version().unwrap_or_default(),
                        g.report.measurements.len()
                    );
                }
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
    pub collateral: CollateralSource,
    /// The prompt; `None` reads standard input (a conversation at a terminal or with
    /// `interactive`, else all of it as one prompt).
    pub prompt: Option<String>,
    pub interactive: bool,
    pub policy: Option<PathBuf>,
    pub allow_simulated: bool,
    pub max_tokens: usize,
    pub model: String,
    pub temperature: f64,
    pub system: Option<String>,
    pub json: bool,
}

fn usage(what: &str, reason: impl Into<String>) -> UsageError {
    UsageError {
        path: what.into(),
        reason: reason.into(),
    }
}

/// `chrysalis chat URL [PROMPT]`.
pub fn chat(o: ChatOptions) -> Result<ExitCode, UsageError> {
    let settings = ChatSettings {
        url: o.url.clone(),
        policy: load_policy(o.policy.as_deref(), o.allow_simulated)?,
        model: o.model.clone(),
        temperature: o.temperature,
        max_tokens: o.max_tokens,
        system: o.system.clone(),
        collateral: o.collateral.clone(),
    };
    let stdin_tty = std::io::stdin().is_terminal();
    let prompt = match (&o.prompt, o.interactive) {
        (Some(_), true) => return Err(usage("chat", "give a prompt or --interactive, not both")),
        (Some(p), false) => Some(p.clone()),
        (None, false) if !stdin_tty => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| usage("standard input", e.to_string()))?;
            if text.trim().is_empty() {
                return Err(usage(
                    "standard input",
                    "no prompt: give one as an argument, pipe one in, or use --interactive",
                ));
            }
            Some(text)
        }
        (None, _) => None,
    };
    if prompt.is_none() && o.json {
        return Err(usage(
            "chat",
            "--json answers one prompt: give the prompt as an argument or on standard input",
        ));
    }
    let rt = runtime()?;
    let Some(prompt) = prompt else {
        let display = Display {
            prompts: stdin_tty,
            colour: std::io::stderr().is_terminal() && chrysalis_client::report::colour_allowed(),
        };
        let outcome = rt
            .block_on(converse(
                &settings,
                std::io::stdin().lock(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
                display,
            ))
            .map_err(|e| usage("terminal", e.to_string()))?;
        return Ok(if outcome.rejected.is_none() && outcome.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    };
    rt.block_on(one_shot(&settings, o.json, prompt))
}

async fn one_shot(s: &ChatSettings, json: bool, prompt: String) -> Result<ExitCode, UsageError> {
    let mut messages = s.first_messages();
    messages.push(serde_json::json!({"role": "user", "content": prompt}));
    let body = s.body(&messages);
    drop(messages);
    let mut answer = String::new();
    let mut platform = None;
    let result = async {
        let mut conn = remote::connect_with(&s.url, &s.policy, now(), &s.collateral).await?;
        platform = Some(conn.attestation.platform());
        if conn.attestation.platform() == Platform::Simulated {
            eprintln!("WARNING: {SIMULATED_WARNING}");
        }
        let mut out = std::io::stdout().lock();
        let usage = remote::generate(&mut conn, &body, |p| {
            if let AnswerPiece::Text(t) = p {
                if json {
                    answer.push_str(t);
                } else {
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                }
            }
        })
        .await?;
        Ok::<_, remote::RemoteError>((usage, conn.attestation))
    }
    .await;
    match result {
        Ok((usage, att)) => {
            if json {
                let mut v = verdict_json(Some(att.platform()), &Ok(att.verified.clone()));
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("enclave".into(), serde_json::json!(s.url));
                    obj.insert("answer".into(), serde_json::json!(answer));
                    obj.insert("usage".into(), usage);
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                let mut v = rejection_json(platform, &e.to_string());
                if platform.is_some() {
                    // Verified, then the answer failed: say which.
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert("verdict".into(), serde_json::json!("accepted"));
                        obj.insert("error".into(), serde_json::json!(e.to_string()));
                        obj.remove("reason");
                    }
                }
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!();
                eprintln!("chrysalis chat: {e}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// `chrysalis gateway`: verify at start (and before the first request after any key change or
/// expiry), then serve the OpenAI-compatible API until Ctrl-C.
pub fn gateway(
    listen: std::net::SocketAddr,
    upstream: String,
    collateral: CollateralSource,
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
            collateral,
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
