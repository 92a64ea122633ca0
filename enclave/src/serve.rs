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
    /// Model: a GGUF file or a Hugging Face directory with safetensors weights (repeatable;
    /// default: the embedded SmolLM2-135M-Instruct).
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
    /// Mutual RA-TLS: accept only clients that present RA-TLS certificates of their own whose
    /// evidence verifies under this policy file (enclave-to-enclave links). Its digest is part
    /// of the measured configuration.
    #[arg(long)]
    pub peer_policy: Option<PathBuf>,
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
    let engine = load_engine(args)?;
    let peers = peer_policy(args)?;
    let config = enclave_config(args, tee.name(), &engine, peers.as_ref());
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
        let peers = peers.map(|p| {
            tracing::info!(target: "chrysalis::enclave", peer_policy_sha256 = %hex::encode(p.sha256), "mutual RA-TLS: clients must be attested enclaves");
            Arc::new(chrysalis_ratls::RaTlsClientVerifier::new(p.policy, crate::system_now))
        });
        crate::server::serve_with_peers(listener, identity, scheduler, peers, shutdown_signal())
            .await
    })
}

/// Load the models the arguments name (the embedded default when none).
fn load_engine(args: &ServeArgs) -> anyhow::Result<Engine> {
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
    Ok(engine)
}

/// The measured configuration of a service with these arguments on this backend.
fn enclave_config(
    args: &ServeArgs,
    tee: &str,
    engine: &Engine,
    peers: Option<&PeerPolicy>,
) -> EnclaveConfig {
    EnclaveConfig::new(
        tee,
        engine.models().map(|m| m.identity.clone()).collect(),
        args.max_active,
        args.max_queued,
        peers.map(|p| p.sha256),
    )
}

/// The `--peer-policy` file, parsed, with the digest of its bytes.
struct PeerPolicy {
    policy: chrysalis_attestation::Policy,
    sha256: [u8; 32],
}

fn peer_policy(args: &ServeArgs) -> anyhow::Result<Option<PeerPolicy>> {
    use sha2::Digest;
    let Some(path) = &args.peer_policy else {
        return Ok(None);
    };
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("--peer-policy {}: {e}", path.display()))?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| anyhow::anyhow!("--peer-policy {}: not UTF-8", path.display()))?;
    let policy = chrysalis_attestation::Policy::from_toml(text)
        .map_err(|e| anyhow::anyhow!("--peer-policy {}: {e}", path.display()))?;
    Ok(Some(PeerPolicy {
        policy,
        sha256: sha2::Sha256::digest(&bytes).into(),
    }))
}

/// How a configuration (its canonical JSON) reaches the evidence on each backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDigests {
    /// SNP: the HOST_DATA the VM must be launched with (SHA-256).
    pub snp_host_data: [u8; 32],
    /// TDX: the digest of the RTMR3 event the enclave extends.
    pub tdx_rtmr3_event: [u8; 48],
    /// Simulator: the evidence's `config_digest` (SHA-384).
    pub simulated: [u8; 48],
}

/// The digests of a configuration, as each backend binds it.
pub fn config_digests(canonical_json: &[u8]) -> ConfigDigests {
    use sha2::{Digest, Sha256, Sha384};
    ConfigDigests {
        snp_host_data: Sha256::digest(canonical_json).into(),
        tdx_rtmr3_event: crate::tee::tdx::config_event_digest(canonical_json),
        simulated: Sha384::digest(canonical_json).into(),
    }
}

/// `chrysalis-enclave config --tee snp|tdx|simulated [serve options]`: the measured configuration
/// a service started with the same options would bind, computed here without a TEE. Operators
/// use its `snp_host_data` for the host agent's SNP launch (the enclave refuses to start when
/// HOST_DATA differs) and verifiers its digests for their policies.
pub fn print_config(args: &ServeArgs, json: bool) -> anyhow::Result<()> {
    let tee = match args.tee {
        TeeChoice::Auto => anyhow::bail!(
            "name the platform (--tee snp, tdx or simulated): the configuration names its backend"
        ),
        TeeChoice::Tdx => "tdx",
        TeeChoice::Snp => "snp",
        TeeChoice::Simulated => "simulated",
    };
    let engine = load_engine(args)?;
    let canonical =
        enclave_config(args, tee, &engine, peer_policy(args)?.as_ref()).canonical_json();
    let text = String::from_utf8(canonical.clone())?;
    let d = config_digests(&canonical);
    let host_data = hex::encode(d.snp_host_data);
    let rtmr3_event = hex::encode(d.tdx_rtmr3_event);
    let simulated = hex::encode(d.simulated);
    if json {
        let config: serde_json::Value = serde_json::from_str(&text)?;
        println!(
            "{:#}",
            serde_json::json!({
                "config": config,
                "canonical_json": text,
                "snp_host_data": host_data,
                "tdx_rtmr3_event_digest": rtmr3_event,
                "simulated_config_digest": simulated,
            })
        );
    } else {
        println!("{text}");
        match args.tee {
            TeeChoice::Snp => println!("snp_host_data            {host_data}"),
            TeeChoice::Tdx => println!("tdx_rtmr3_event_digest   {rtmr3_event}"),
            _ => println!("simulated_config_digest  {simulated}"),
        }
    }
    Ok(())
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
