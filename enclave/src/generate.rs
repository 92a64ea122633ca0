//! `chrysalis-enclave generate`: run the inference engine alone (scripts and benchmarks).

use std::io::Write;
use std::path::PathBuf;

use chrysalis_inference::{
    load_default, Engine, GenerateRequest, LoadOptions, Message, Model, SamplingParams,
};

/// Options of `generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model: a GGUF file or a Hugging Face directory with safetensors weights (default: the
    /// embedded SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// A system message to put first.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Random seed.
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Weight precision: auto (the native engine on CPU: Q4_0/Q4_1/Q8_0 as stored, other
    /// formats as Q8_0; batched) or native (candle, exactly the file's tensors).
    #[arg(long, default_value = "auto")]
    pub precision: chrysalis_inference::Precision,
    /// Device: auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: chrysalis_inference::DeviceChoice,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Run this many copies of the request concurrently through the scheduler (a throughput
    /// benchmark; implies --json output of the totals).
    #[arg(long)]
    pub streams: Option<usize>,
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn run_streams(
    engine: chrysalis_inference::Engine,
    req: &GenerateRequest,
    n: usize,
) -> anyhow::Result<()> {
    use chrysalis_inference::{Event, Scheduler, SchedulerConfig};
    let sched = Scheduler::start(
        std::sync::Arc::new(engine),
        SchedulerConfig {
            max_active: n,
            max_queued: n,
        },
    );
    let start = std::time::Instant::now();
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = req.clone();
        r.params.seed = r.params.seed.wrapping_add(i as u64);
        streams.push(sched.submit(&r)?);
    }
    let mut tokens = 0usize;
    let mut ttfts = Vec::new();
    for mut rx in streams {
        while let Some(ev) = rx.blocking_recv() {
            if let Event::Done(u) = ev? {
                tokens += u.completion_tokens;
                ttfts.push(u.ttft_ms);
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    ttfts.sort_by(f64::total_cmp);
    let v = serde_json::json!({
        "streams": n,
        "completion_tokens": tokens,
        "wall_s": secs,
        "aggregate_tokens_per_s": tokens as f64 / secs,
        "ttft_ms_median": ttfts.get(ttfts.len() / 2),
        "peak_rss_mib": peak_rss_kib().map(|k| k as f64 / 1024.0),
    });
    println!("{v}");
    Ok(())
}

/// Set the compute thread count before candle starts its pool.
pub fn set_threads(threads: Option<usize>) {
    if let Some(n) = threads.filter(|n| *n > 0) {
        // Read by candle (and rayon) when their pools start; nothing has started yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Load the model named on the command line, or the default.
pub fn load_model(path: Option<&PathBuf>, opts: &LoadOptions) -> anyhow::Result<Model> {
    Ok(match path {
        Some(p) => Model::load(p, opts)?,
        None => load_default(opts)?,
    })
}

/// Run it.
pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    set_threads(args.threads);
    let opts = LoadOptions {
        precision: args.precision,
        device: args.device,
        name: None,
    };
    let model = load_model(args.model.as_ref(), &opts)?;
    let identity = model.identity.clone();
    let engine = Engine::single(model);
    let mut messages = Vec::new();
    if let Some(s) = &args.system {
        messages.push(Message::new("system", s.clone()));
    }
    messages.push(Message::new("user", args.prompt.clone()));
    let req = GenerateRequest {
        model: String::new(),
        messages,
        params: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
            max_tokens: args.max_tokens,
            stop: args.stop.clone(),
        },
    };
    if let Some(n) = args.streams.filter(|n| *n > 0) {
        return run_streams(engine, &req, n);
    }
    let mut stdout = std::io::stdout().lock();
    let streaming = !args.json;
    let done = engine.generate_blocking(&req, |t| {
        if streaming {
            let _ = stdout.write_all(t.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if args.json {
        let v = serde_json::json!({
            "model": identity.name,
            "model_sha256": hex::encode(identity.sha256),
            "text": done.text,
            "tokens": done.tokens,
            "prompt_tokens": done.usage.prompt_tokens,
            "prompt_token_ids": done.prompt_tokens,
            "completion_tokens": done.usage.completion_tokens,
            "finish_reason": done.usage.finish_reason,
            "ttft_ms": done.usage.ttft_ms,
            "decode_tokens_per_s": done.usage.decode_tokens_per_s,
            "precision": format!("{:?}", args.precision).to_lowercase(),
            "threads": candle_core_threads(),
            "peak_rss_mib": peak_rss_kib().map(|k| k as f64 / 1024.0),
        });
        writeln!(stdout, "{v}")?;
    } else {
        writeln!(stdout)?;
    }
    Ok(())
}

fn candle_core_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}
