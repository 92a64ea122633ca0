//! What `chrysalis gateway` costs: its added latency over a direct sealed call, per request and
//! per streamed chunk, and the requests per second it sustains with 64 concurrent clients.
//!
//! Both paths reach the same enclave server (simulated TEE: real keys, RA-TLS, HPKE sealing,
//! gRPC) whose model is replaced by a fixed-text answerer: one token per chunk, as many as
//! `max_tokens` asks, at no cost. What is left is everything around the model, which is what
//! the gateway adds to. Everything runs on this machine's cores together (client, gateway,
//! enclave). `cargo bench -p chrysalis-tests --bench gateway`; results in BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrysalis_attestation::Policy;
use chrysalis_client::gateway::{Gateway, GatewayConfig};
use chrysalis_client::inputs::now;
use chrysalis_client::remote::{self, Attested};
use chrysalis_enclave::server::Answerer;
use chrysalis_inference::scheduler::EventStream;
use chrysalis_inference::{
    Event, FinishReason, GenerateRequest, InferenceError, ModelIdentity, Usage,
};
use chrysalis_proto::ModelInfo;

const MODEL: &str = "fixed-text";

/// Answers `max_tokens` tokens of fixed text at once.
#[derive(Debug)]
struct FixedText;

impl Answerer for FixedText {
    fn models(&self) -> Vec<ModelInfo> {
        vec![ModelInfo {
            name: MODEL.into(),
            sha256: vec![0; 32],
            size: 0,
            architecture: "none".into(),
            context_length: 4096,
        }]
    }

    fn submit(&self, req: &GenerateRequest) -> Result<EventStream, InferenceError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let n = req.params.max_tokens.max(1);
        for i in 0..n {
            let _ = tx.send(Ok(Event::Token {
                id: u32::try_from(i).unwrap_or(0),
                text: " word".into(),
            }));
        }
        let _ = tx.send(Ok(Event::Done(Usage {
            finish_reason: FinishReason::Length,
            prompt_tokens: 8,
            completion_tokens: n,
            ttft_ms: 0.0,
            decode_tokens_per_s: 0.0,
        })));
        Ok(rx)
    }

    fn queued(&self) -> usize {
        0
    }
}

fn sealed_body(max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Benchmark prompt."}],
        "params": {"temperature": 0.0, "max_tokens": max_tokens, "top_p": 1.0, "top_k": 0, "seed": 0, "stop": []},
    })
}

fn openai_body(max_tokens: usize, stream: bool) -> String {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Benchmark prompt."}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    .to_string()
}

async fn direct(conn: &mut Attested, max_tokens: usize) {
    let mut pieces = 0usize;
    remote::generate(conn, &sealed_body(max_tokens), |_| pieces += 1)
        .await
        .expect("direct answer");
    assert_eq!(pieces, max_tokens + 1, "every chunk and the end");
}

async fn via_gateway(http: &reqwest::Client, url: &str, max_tokens: usize, stream: bool) {
    let mut resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(openai_body(max_tokens, stream))
        .send()
        .await
        .expect("gateway request");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut body = Vec::new();
    while let Some(c) = resp.chunk().await.expect("gateway body") {
        body.extend_from_slice(&c);
    }
    if stream {
        assert!(body.ends_with(b"data: [DONE]\n\n"), "stream not finished");
    } else {
        assert!(body.windows(5).any(|w| w == b" word"), "no answer");
    }
}

/// Median and mean of `iters` timed runs of an async expression (after `iters / 10` warm-up
/// runs), in µs.
macro_rules! time {
    ($iters:expr, $run:expr) => {{
        for _ in 0..$iters / 10 {
            $run.await;
        }
        let mut us = Vec::with_capacity($iters);
        for _ in 0..$iters {
            let t = Instant::now();
            $run.await;
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
        us.sort_by(f64::total_cmp);
        let mean = us.iter().sum::<f64>() / us.len() as f64;
        (us[us.len() / 2], mean)
    }};
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run a short pass.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iters = if quick { 20 } else { 2000 };
    let load_secs = if quick { 1 } else { 10 };
    let stream_tokens = 64;

    let models = vec![ModelIdentity {
        name: MODEL.into(),
        sha256: [0; 32],
        size: 0,
        architecture: "none".into(),
        context_length: 4096,
    }];
    let enclave = chrysalis_tests::serve_simulated(Arc::new(FixedText), models, 64, 256);
    let upstream = enclave.url();
    let policy = Policy::baseline().allow_simulated();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let g = Gateway::new(GatewayConfig {
            upstream: upstream.clone(),
            policy: policy.clone(),
            session_ttl: Duration::from_secs(3600),
            now: None,
        });
        g.verify().await.expect("gateway verifies the enclave");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let gw = format!(
            "http://{}/v1/chat/completions",
            listener.local_addr().expect("addr")
        );
        tokio::spawn(chrysalis_client::gateway::serve(
            listener,
            g,
            std::future::pending(),
        ));
        let http = reqwest::Client::builder()
            .http1_only()
            .build()
            .expect("http client");
        let mut conn = remote::connect(&upstream, &policy, now())
            .await
            .expect("direct connection verifies");

        println!("gateway benchmark: {iters} requests per figure, microseconds (median / mean)");
        let d1 = time!(iters, direct(&mut conn, 1));
        let g1 = time!(iters, via_gateway(&http, &gw, 1, false));
        let ds = time!(iters, direct(&mut conn, stream_tokens));
        let gs = time!(iters, via_gateway(&http, &gw, stream_tokens, true));
        let row = |name: &str, (med, mean): (f64, f64)| {
            println!("  {name:<44} {med:>9.1} / {mean:>9.1}");
        };
        row("direct sealed call, 1 chunk", d1);
        row("through the gateway, 1 chunk (JSON)", g1);
        row(&format!("direct sealed call, {stream_tokens} chunks"), ds);
        row(
            &format!("through the gateway, {stream_tokens} chunks (SSE)"),
            gs,
        );
        let per_request = g1.0 - d1.0;
        let per_chunk = ((gs.0 - g1.0) - (ds.0 - d1.0)) / (stream_tokens - 1) as f64;
        println!("  added by the gateway per request (median)    {per_request:>9.1}");
        println!("  added by the gateway per streamed chunk      {per_chunk:>9.2}");

        // 64 clients, each its own connection, as many requests as they can for a while.
        for (label, stream, tokens) in [
            ("64 clients, 1-chunk JSON answers", false, 1usize),
            ("64 clients, 16-chunk SSE answers", true, 16),
        ] {
            let deadline = Instant::now() + Duration::from_secs(load_secs);
            let t0 = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let gw = gw.clone();
                tasks.push(tokio::spawn(async move {
                    let http = reqwest::Client::builder()
                        .http1_only()
                        .build()
                        .expect("http client");
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        via_gateway(&http, &gw, tokens, stream).await;
                        n += 1;
                    }
                    n
                }));
            }
            let mut total = 0u64;
            for t in tasks {
                total += t.await.expect("client task");
            }
            let rps = total as f64 / t0.elapsed().as_secs_f64();
            println!("  {label:<44} {rps:>9.0} requests/s ({total} in {load_secs} s)");
        }
    });
}
