//! The official OpenAI Python client (PyPI `openai`, installed by `make test` into .venv) talks
//! to `chrysalis gateway` in front of a simulated enclave: models, a chat completion, a streamed
//! one and a completion, all real model text; OpenAI-style errors for bad requests. With a
//! policy that does not match, the same client gets an error and the enclave sees no request.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::time::Duration;

use chrysalis_attestation::Policy;
use chrysalis_client::gateway::{Gateway, GatewayConfig};
use chrysalis_tests::shared_enclave;

fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let ok = std::process::Command::new(&p)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(p);
    }
    if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() {
        panic!(
            "{}: no python with the openai package (make venv installs it)",
            p.display()
        );
    }
    eprintln!("SKIPPED: the openai Python package is not installed (make venv)");
    None
}

async fn start_gateway(
    upstream: String,
    policy: Policy,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let g = Gateway::new(GatewayConfig {
        upstream,
        policy,
        session_ttl: Duration::from_secs(300),
        now: None,
        collateral: Default::default(),
    });
    let _ = g.verify().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(chrysalis_client::gateway::serve(listener, g, async {
        let _ = rx.await;
    }));
    (format!("http://{addr}/v1"), tx)
}

async fn run_client(py: PathBuf, base: String, mode: &str) -> serde_json::Value {
    let mode = mode.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/python/openai_client.py"
            ))
            .args([&base, &mode])
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("client output JSON")
}

#[test]
fn the_openai_client_works_through_the_gateway_and_fails_closed() {
    let Some(py) = python() else { return };
    let Some(e) = shared_enclave() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        // A policy that pins another measurement: refused, nothing sent.
        let wrong = Policy::from_toml(&format!(
            "version = 1\nplatforms = [\"simulated\"]\n[simulated]\nmeasurement = [\"{}\"]\n",
            "ab".repeat(48)
        ))
        .expect("policy");
        let before = e.generate_requests().await;
        let (base, stop) = start_gateway(e.url(), wrong).await;
        let v = run_client(py.clone(), base, "rejected").await;
        assert_eq!(v["status"], 502, "{v}");
        assert_eq!(v["code"], "enclave_not_verified", "{v}");
        assert_eq!(
            e.generate_requests().await,
            before,
            "a request reached the enclave"
        );
        let _ = stop.send(());

        // The matching policy: real answers.
        let (base, stop) = start_gateway(e.url(), Policy::baseline().allow_simulated()).await;
        let v = run_client(py, base, "ok").await;
        assert_eq!(v["models"].as_array().map(Vec::len), Some(1), "{v}");
        let chat = v["chat"].as_str().unwrap_or("");
        assert!(!chat.trim().is_empty(), "{v}");
        assert_eq!(
            v["stream"], v["chat"],
            "greedy streamed and plain answers differ: {v}"
        );
        assert!(v["stream_chunks"].as_u64().unwrap_or(0) > 2, "{v}");
        assert!(v["stream_finish_reason"].is_string(), "{v}");
        assert!(
            !v["completion"].as_str().unwrap_or("").trim().is_empty(),
            "{v}"
        );
        let errors = &v["errors"];
        for (name, status, code) in [
            ("unknown_model", 404, "model_not_found"),
            ("empty_messages", 400, "invalid_request"),
            ("bad_json", 400, "invalid_request"),
            ("missing_messages", 400, "invalid_request"),
            ("bad_role", 400, "invalid_request"),
            ("bad_temperature", 400, "invalid_request"),
            ("huge_body", 413, "request_too_large"),
        ] {
            assert_eq!(errors[name][0], status, "{name}: {errors}");
            assert_eq!(errors[name][1], code, "{name}: {errors}");
        }
        assert_eq!(v["attestation"]["verified"], true, "{v}");
        assert_eq!(v["attestation"]["platform"], "simulated", "{v}");
        let _ = stop.send(());
    });
}
