//! What `chrysalis gateway` costs: its added latency over a direct sealed call, per request and
//! per streamed chunk, and the requests per second it sustains with 64 concurrent clients.
//!
//! Both paths reach the same enclave server (simulated TEE: real keys, RA-TLS, HPKE sealing,
//! gRPC) whose model is replaced by a fixed-text answerer that costs nothing, so what is left is
//! everything around the model, which is what the gateway adds to. Chunks come either all at
//! once (a burst: throughput of the path) or one every millisecond (decoding's cadence: each
//! chunk then travels alone, and its delivery latency, from the enclave handing it over to the
//! client reading it, is measured). Client, gateway and enclave share this machine's cores.
//! `cargo bench -p chrysalis-tests --bench gateway`; results in BENCHMARKS.md.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chrysalis_attestation::Policy;
use chrysalis_client::gateway::{Gateway, GatewayConfig};
use chrysalis_client::inputs::now;
use chrysalis_client::remote::{self, AnswerPiece, Attested};
use chrysalis_enclave::server::Answerer;
use chrysalis_inference::scheduler::EventStream;
use chrysalis_inference::{
    Event, FinishReason, GenerateRequest, InferenceError, ModelIdentity, Usage,
};
use chrysalis_proto::ModelInfo;

const MODEL: &str = "fixed-text";

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since `base()`.
fn stamp() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Answers `max_tokens` tokens, each one's text the moment it was handed over (`stamp()`).
/// The request's seed is, for this answerer only, the spacing of the tokens in µs (0: a burst).
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
        let spacing = Duration::from_micros(req.params.seed);
        let run = async move {
            for i in 0..n {
                if !spacing.is_zero() {
                    tokio::time::sleep(spacing).await;
                }
                let token = Event::Token {
                    id: u32::try_from(i).unwrap_or(0),
                    text: format!(" {}", stamp()),
                };
                if tx.send(Ok(token)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(Event::Done(Usage {
                finish_reason: FinishReason::Length,
                prompt_tokens: 8,
                completion_tokens: n,
                ttft_ms: 0.0,
                decode_tokens_per_s: 0.0,
            })));
        };
        tokio::spawn(run);
        Ok(rx)
    }

    fn queued(&self) -> usize {
        0
    }
}

fn sealed_body(max_tokens: usize, spacing_us: u64) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Benchmark prompt."}],
        "params": {"temperature": 0.0, "max_tokens": max_tokens, "top_p": 1.0, "top_k": 0, "seed": spacing_us, "stop": []},
    })
}

fn openai_body(max_tokens: usize, stream: bool, spacing_us: u64) -> String {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Benchmark prompt."}],
        "max_tokens": max_tokens,
        "seed": spacing_us,
        "stream": stream,
    })
    .to_string()
}

/// A sealed call straight to the enclave; the delivery latency of each chunk is added to `lag`.
async fn direct(conn: &mut Attested, max_tokens: usize, spacing_us: u64, lag: &mut Vec<f64>) {
    let mut pieces = 0usize;
    remote::generate(conn, &sealed_body(max_tokens, spacing_us), |p| {
        pieces += 1;
        if let AnswerPiece::Text(t) = p {
            let arrived = stamp();
            if let Ok(sent) = t.trim().parse::<u64>() {
                lag.push(arrived.saturating_sub(sent) as f64 / 1e3);
            }
        }
    })
    .await
    .expect("direct answer");
    assert_eq!(pieces, max_tokens + 1, "every chunk and the end");
}

/// The same through the gateway (OpenAI API; SSE when `stream`).
async fn via_gateway(
    http: &reqwest::Client,
    url: &str,
    max_tokens: usize,
    stream: bool,
    spacing_us: u64,
    lag: &mut Vec<f64>,
) {
    let mut resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(openai_body(max_tokens, stream, spacing_us))
        .send()
        .await
        .expect("gateway request");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut body = Vec::new();
    let mut seen = 0usize;
    while let Some(c) = resp.chunk().await.expect("gateway body") {
        let arrived = stamp();
        body.extend_from_slice(&c);
        if !stream {
            continue;
        }
        // Every complete event that arrived now: its content is when the enclave sent it.
        let text = String::from_utf8_lossy(&body);
        let events: Vec<&str> = text.split("\n\n").collect();
        let complete = events.len() - 1;
        for e in &events[seen..complete] {
            let content = e
                .strip_prefix("data: ")
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .and_then(|v| {
                    v["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_owned)
                });
            if let Some(sent) = content.and_then(|c| c.trim().parse::<u64>().ok()) {
                lag.push(arrived.saturating_sub(sent) as f64 / 1e3);
            }
        }
        seen = complete;
    }
    if stream {
        assert!(body.ends_with(b"data: [DONE]\n\n"), "stream not finished");
    } else {
        assert!(body.starts_with(b"{"), "no answer");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
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
        let mean = us.iter().sum::<f64>() / us.len() as f64;
        (median(us), mean)
    }};
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run a short pass.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iters = if quick { 20 } else { 2000 };
    let load_secs = if quick { 1 } else { 10 };
    let burst = 64;
    base();

    let models = vec![ModelIdentity {
        name: MODEL.into(),
        sha256: [0; 32],
        size: 0,
        architecture: "none".into(),
        context_length: 4096,
        files: Vec::new(),
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
            collateral: Default::default(),
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
        let mut lag = Vec::new();

        println!("gateway benchmark, microseconds (median / mean)");
        let d1 = time!(iters, direct(&mut conn, 1, 0, &mut lag));
        let g1 = time!(iters, via_gateway(&http, &gw, 1, false, 0, &mut lag));
        let ds = time!(iters, direct(&mut conn, burst, 0, &mut lag));
        let gs = time!(iters, via_gateway(&http, &gw, burst, true, 0, &mut lag));
        let row = |name: &str, (med, mean): (f64, f64)| {
            println!("  {name:<52} {med:>9.1} / {mean:>9.1}");
        };
        row(&format!("direct sealed call, 1 chunk ({iters} calls)"), d1);
        row("through the gateway, 1 chunk (JSON)", g1);
        row(
            &format!("direct sealed call, a burst of {burst} chunks"),
            ds,
        );
        row(
            &format!("through the gateway, a burst of {burst} chunks (SSE)"),
            gs,
        );
        println!(
            "  added by the gateway per request                     {:>9.1}",
            g1.0 - d1.0
        );
        println!(
            "  added by the gateway per chunk, in a burst           {:>9.2}",
            ((gs.0 - g1.0) - (ds.0 - d1.0)) / (burst - 1) as f64
        );

        // Chunks 1 ms apart: each travels alone. Delivery latency of every chunk.
        let (n, spaced) = (16usize, 1000u64);
        let calls = iters / 20;
        let mut d_lag = Vec::new();
        let mut g_lag = Vec::new();
        for _ in 0..calls.max(1) {
            direct(&mut conn, n, spaced, &mut d_lag).await;
            via_gateway(&http, &gw, n, true, spaced, &mut g_lag).await;
        }
        let (dm, gm) = (median(d_lag.clone()), median(g_lag.clone()));
        println!(
            "  chunk delivery, 1 ms apart ({} chunks): direct       {dm:>9.1}",
            d_lag.len()
        );
        println!(
            "  chunk delivery, 1 ms apart ({} chunks): gateway      {gm:>9.1}",
            g_lag.len()
        );
        println!(
            "  added by the gateway per chunk, one at a time        {:>9.1}",
            gm - dm
        );

        // 64 clients, each its own connection, as many requests as they can for a while.
        for (label, stream, tokens) in [
            ("64 clients, 1-chunk JSON answers", false, 1usize),
            ("64 clients, 16-chunk SSE answers (burst)", true, 16),
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
                    let mut lag = Vec::new();
                    while Instant::now() < deadline {
                        via_gateway(&http, &gw, tokens, stream, 0, &mut lag).await;
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
            println!("  {label:<52} {rps:>9.0} requests/s ({total} in {load_secs} s)");
        }
    });
}
