//! `chrysalis-enclave [--tee ...] --listen ADDR`: start the enclave service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chrysalis_inference::{Engine, LoadOptions, Scheduler, SchedulerConfig};

use crate::identity::{EnclaveConfig, Identity};
use crate::tee::{self, GuestPaths, TeeChoice};

/// Options of the service.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TEE backend. `auto` detects TDX or SNP and never picks the simulator.
    #[arg(long, value_enum, default_value = "auto")]
    pub tee: TeeChoice,
    /// Address to listen on (RA-TLS, gRPC).
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// GGUF model file (repeatable; default: the embedded SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Vec<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sequences decoded concurrently.
    #[arg(long, default_value_t = 8)]
    pub max_active: usize,
    /// Requests waiting beyond those before "busy".
    #[arg(long, default_value_t = 32)]
    pub max_queued: usize,
    /// Fresh (nonce-bound) evidence per second, on average.
    #[arg(long, default_value_t = 5.0)]
    pub fresh_evidence_per_second: f64,
    /// Weight precision: auto or native.
    #[arg(long, default_value = "auto")]
    pub precision: chrysalis_inference::Precision,
    /// Device: auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    pub device: chrysalis_inference::DeviceChoice,
    /// The kernel command line when running as an image's init: the simulator then measures
    /// the image (enclave binary and command line), as the image manifest predicts.
    #[arg(skip)]
    pub image_cmdline: Option<String>,
}

/// Load models, make the identity, serve until Ctrl-C / SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    crate::generate::set_threads(args.threads);
    let tee: Box<dyn tee::TeeDevice> = match (args.tee, &args.image_cmdline) {
        (TeeChoice::Simulated, Some(cmdline)) => {
            Box::new(tee::simulated::SimulatedDevice::for_image(cmdline))
        }
        (choice, _) => tee::open(choice, &GuestPaths::default())?,
    };
    if !tee.is_confidential() {
        eprintln!("chrysalis-enclave: WARNING: {}", tee::simulated::WARNING);
    }
    let gpu = crate::gpu::detect()?;
    let opts = LoadOptions {
        precision: args.precision,
        device: args.device,
        name: None,
    };
    let mut engine = Engine::default();
    if args.model.is_empty() {
        engine.add(chrysalis_inference::load_default(&opts)?);
    }
    for p in &args.model {
        engine.add(chrysalis_inference::Model::load(p, &opts)?);
    }
    let config = EnclaveConfig {
        format: "chrysalis-enclave-config/v1",
        enclave_version: env!("CARGO_PKG_VERSION"),
        tee: tee.name().to_owned(),
        models: engine.models().map(|m| m.identity.clone()).collect(),
        max_active: args.max_active,
        max_queued: args.max_queued,
        binding_version: chrysalis_proto::binding::BINDING_VERSION,
    };
    let identity = Arc::new(Identity::new(
        tee,
        gpu,
        &config,
        args.fresh_evidence_per_second,
    )?);
    let scheduler = Arc::new(Scheduler::start(
        Arc::new(engine),
        SchedulerConfig {
            max_active: args.max_active,
            max_queued: args.max_queued,
        },
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = crate::server::bind(args.listen).await?;
        let addr = listener.local_addr()?;
        // One line on stdout, for scripts and tests that start us on port 0.
        println!(
            "chrysalis-enclave listening on https://{addr} (tee {})",
            if identity.is_simulated() {
                "SIMULATED: NOT CONFIDENTIAL"
            } else {
                "hardware"
            }
        );
        tracing::info!(target: "chrysalis::enclave", %addr, "serving");
        crate::server::serve(listener, identity, scheduler, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            return;
        }
    }
    let _ = ctrl_c.await;
}
