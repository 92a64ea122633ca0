//! `chrysalis`: the developer's and auditor's command line.
//!
//! Exit status: 0 accepted, 1 rejected, 2 a file could not be read or the command was misused.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use chrysalis_attestation::{Evidence, Platform, Timestamp, Verifier, VerifyError};
use chrysalis_client::collateral::CollateralStore;
use chrysalis_client::inputs::{
    load_endorsements, load_evidence, load_policy, EndorsementFiles, UsageError,
};
use chrysalis_client::report::{verdict_json, verdict_text, SIMULATED_WARNING};
use clap::{Parser, Subcommand};

mod image_cmd;
mod remote_cmd;

/// Chrysalis: verify confidential-computing evidence and talk to attested enclaves.
#[derive(Debug, Parser)]
#[command(name = "chrysalis", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify TDX or SEV-SNP evidence: is it genuine, what does it measure, does it meet a policy?
    ///
    /// EVIDENCE is a raw TDX quote or SNP report (binary or hex text) or a Chrysalis evidence
    /// bundle (JSON). Exit status: 0 accepted, 1 rejected, 2 unreadable file or misuse.
    Verify(VerifyArgs),
    /// Compute the measurements a VM will report, from its files and shape (no hardware).
    #[command(subcommand)]
    Measure(MeasureCommand),
    /// Replay a TDX event log (CCEL binary or JSON) to RTMR0..3, list its events, and compare
    /// with a quote's RTMRs.
    Eventlog(EventlogArgs),
    /// Connect to an enclave, verify its evidence (in the RA-TLS handshake and fresh over a
    /// nonce) against the policy, and print the verdict. Exit 0 accepted, 1 rejected.
    Attest(AttestArgs),
    /// Verify an enclave, then seal a prompt to its attested key and stream the answer.
    /// Nothing of the prompt leaves this process unless verification succeeded. Exit 0 only
    /// when the whole, verified answer arrived.
    Chat(ChatArgs),
    /// An OpenAI-compatible HTTP server that verifies the enclave (against the policy) before
    /// any prompt leaves this machine, and seals every prompt to the attested key.
    Gateway(GatewayArgs),
    /// Reproducible VM images: build from a recipe, verify against the manifest, emit a policy.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// Address to listen on (keep it on loopback: prompts arrive here in clear).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// The enclave or host relay: https://HOST:PORT
    #[arg(long)]
    upstream: String,
    #[command(flatten)]
    policy: RemotePolicyArgs,
    /// Seconds a verification holds before the next request verifies again.
    #[arg(long, default_value_t = 300)]
    session_ttl: u64,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build an image from a recipe (every input pinned by SHA-256) into a directory, with its
    /// manifest of expected measurements.
    Build {
        /// The recipe (TOML), e.g. images/default.toml.
        #[arg(long, value_name = "FILE")]
        recipe: PathBuf,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Download cache (default: OUT/.cache).
        #[arg(long, value_name = "DIR")]
        cache: Option<PathBuf>,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute every hash and measurement from the files and compare with the manifest.
    /// Exit 0 when all match, 1 otherwise (each mismatch named).
    Verify {
        /// Image directory (with manifest.json).
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Emit a verifier policy (TOML) that accepts exactly this image (after verifying it).
    Policy {
        /// Image directory (with manifest.json).
        dir: PathBuf,
        /// Also accept the simulator's evidence of this image (NOT CONFIDENTIAL).
        #[arg(long)]
        allow_simulated: bool,
        /// Write to FILE instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RemotePolicyArgs {
    /// Policy file (TOML). Default: the baseline policy (real TDX/SNP only).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Also accept the development simulator (NOT CONFIDENTIAL).
    #[arg(long)]
    allow_simulated: bool,
    /// Take the vendor's endorsements (TDX collateral, SNP VCEK) the enclave's evidence lacks
    /// from the host agent's cache: its API, http://HOST:PORT[?vm=NAME]. Default: Intel PCS /
    /// AMD KDS through the local cache.
    #[arg(long, value_name = "URL")]
    collateral_from: Option<String>,
    #[command(flatten)]
    store: CollateralArgs,
}

impl RemotePolicyArgs {
    fn collateral(&self) -> chrysalis_client::collateral::CollateralSource {
        use chrysalis_client::collateral::CollateralSource;
        match &self.collateral_from {
            Some(url) => CollateralSource::Host(url.clone()),
            None => CollateralSource::Store(self.store.store()),
        }
    }
}

#[derive(Debug, clap::Args)]
struct AttestArgs {
    /// The enclave (or relay): https://HOST:PORT
    url: String,
    #[command(flatten)]
    policy: RemotePolicyArgs,
    /// Print the verdict as JSON (the object `chrysalis verify --json` prints).
    #[arg(long)]
    json: bool,
    /// After a successful verification, write a policy pinning exactly these measurements
    /// (trust on first use, made explicit).
    #[arg(long, value_name = "FILE")]
    write_policy: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ChatArgs {
    /// The enclave (or relay): https://HOST:PORT
    url: String,
    /// The prompt. Without one: a conversation at a terminal (or with --interactive), else
    /// standard input is read as the prompt.
    prompt: Option<String>,
    /// Hold a conversation on standard input (one line per turn; /reset, /attest, /exit).
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Print the answer, its usage and the verdict as one JSON object instead of streaming.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: RemotePolicyArgs,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Model name (default: the enclave's default model).
    #[arg(long, default_value = "")]
    model: String,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// A system message.
    #[arg(long)]
    system: Option<String>,
}

#[derive(Debug, Subcommand)]
enum MeasureCommand {
    /// TDX: MRTD from the TDVF metadata; RTMR1/RTMR2 for direct kernel boot.
    Tdx(MeasureTdxArgs),
    /// SEV-SNP: the launch digest (MEASUREMENT).
    Snp(MeasureSnpArgs),
    /// SEV-SNP: sign an ID block for a launch digest (for `chrysalis-host`'s `snp_id_block`).
    SnpIdBlock(SnpIdBlockArgs),
}

#[derive(Debug, clap::Args)]
struct SnpIdBlockArgs {
    /// The launch digest the block admits (96 hex digits, from `chrysalis measure snp`).
    #[arg(long, value_name = "HEX")]
    measurement: String,
    /// ID key: ECDSA P-384 private key, PEM (SEC1 or PKCS#8) or DER.
    #[arg(long, value_name = "FILE")]
    id_key: PathBuf,
    /// Author key (optional): signs the ID key; P-384 like the ID key.
    #[arg(long, value_name = "FILE")]
    author_key: Option<PathBuf>,
    /// The guest policy the VM is launched with (the launch fails if they differ).
    #[arg(long, value_name = "HEX", default_value = "0x30000")]
    policy: String,
    /// FAMILY_ID, 32 hex digits.
    #[arg(long, value_name = "HEX")]
    family_id: Option<String>,
    /// IMAGE_ID, 32 hex digits.
    #[arg(long, value_name = "HEX")]
    image_id: Option<String>,
    /// GUEST_SVN.
    #[arg(long, value_name = "N", default_value_t = 0)]
    guest_svn: u32,
    /// Print the JSON file the host agent reads (`snp_id_block = "FILE"`).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct MeasureTdxArgs {
    /// OVMF/TDVF firmware image.
    #[arg(long, value_name = "FILE")]
    firmware: PathBuf,
    #[command(flatten)]
    boot: DirectBoot,
    /// Guest memory (e.g. 2G, 4096M, or bytes).
    #[arg(long, value_name = "SIZE", default_value = "2G")]
    memory: String,
    /// vCPU count.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u32,
    /// Two-pass page adding (QEMU 8.x-based TDX stacks) instead of single pass.
    #[arg(long)]
    two_pass: bool,
    /// The kernel reaches OVMF as the file is, without QEMU's setup-header patch.
    #[arg(long)]
    unpatched_kernel: bool,
    /// Newer edk2 puts the initrd token before the command line ("initrd=initrd CMDLINE").
    #[arg(long)]
    initrd_token_first: bool,
    #[command(flatten)]
    acpi: AcpiFiles,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// QEMU's ACPI fw_cfg files for this machine shape (QEMU version, vCPUs, memory, devices), as a
/// guest of the same shape reads them from `/sys/firmware/qemu_fw_cfg/by_name/etc/.../raw`, or
/// their digests from the event log of such a boot. With either, RTMR0 is computed.
#[derive(Debug, clap::Args)]
struct AcpiFiles {
    /// Take the three ACPI digests from this event log's RTMR0 (CCEL or JSON); every other
    /// RTMR0 event is still computed from the firmware and the VM shape.
    #[arg(long, value_name = "LOG", conflicts_with_all = ["acpi_loader", "acpi_rsdp", "acpi_tables"])]
    acpi_from_eventlog: Option<PathBuf>,
    /// `etc/table-loader`.
    #[arg(long, value_name = "FILE", requires_all = ["acpi_rsdp", "acpi_tables"])]
    acpi_loader: Option<PathBuf>,
    /// `etc/acpi/rsdp`.
    #[arg(long, value_name = "FILE", requires_all = ["acpi_loader", "acpi_tables"])]
    acpi_rsdp: Option<PathBuf>,
    /// `etc/acpi/tables`.
    #[arg(long, value_name = "FILE", requires_all = ["acpi_loader", "acpi_rsdp"])]
    acpi_tables: Option<PathBuf>,
}

/// Direct kernel boot inputs (TDX: measured by OVMF into RTMR1/RTMR2; SNP: through the SEV
/// kernel-hashes table).
#[derive(Debug, clap::Args)]
struct DirectBoot {
    /// Kernel (bzImage with EFI stub) for direct boot.
    #[arg(long, value_name = "FILE")]
    kernel: Option<PathBuf>,
    /// Initrd for direct boot.
    #[arg(long, value_name = "FILE", requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", requires = "kernel")]
    cmdline: Option<String>,
}

#[derive(Debug, clap::Args)]
struct MeasureSnpArgs {
    /// OVMF firmware image (an AmdSev build for kernel hashes).
    #[arg(long, value_name = "FILE")]
    firmware: PathBuf,
    /// vCPU count.
    #[arg(long, value_name = "N")]
    vcpus: u32,
    /// vCPU model, as QEMU names it (EPYC-Milan, EPYC-Genoa, EPYC-Turin, ...).
    #[arg(long, value_name = "NAME")]
    vcpu_type: String,
    #[command(flatten)]
    boot: DirectBoot,
    /// SEV features in the VMSA, hex (default 0x1: SNP active).
    #[arg(long, value_name = "HEX", default_value = "0x1")]
    guest_features: String,
    /// VMM type.
    #[arg(long, value_name = "TYPE", default_value = "qemu")]
    vmm_type: VmmArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum VmmArg {
    Qemu,
    Ec2,
    Gce,
}

#[derive(Debug, clap::Args)]
struct EventlogArgs {
    /// Event log: a CCEL log area (binary) or a JSON event list.
    file: PathBuf,
    /// A TDX quote (binary, hex or bundle) whose RTMRs to compare with.
    #[arg(long, value_name = "FILE")]
    quote: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Evidence file: TDX quote, SNP report (binary or hex), or evidence bundle (JSON).
    evidence: PathBuf,
    /// Intel collateral (PCS / dcap-qvl JSON) for a TDX quote. Fetched and cached when absent.
    #[arg(long, value_name = "FILE")]
    collateral: Option<PathBuf>,
    /// VCEK or VLEK certificate (DER or PEM) for an SNP report. Fetched from AMD KDS when absent.
    #[arg(long, value_name = "FILE")]
    vcek: Option<PathBuf>,
    /// ASK/ARK (or ASVK/ARK) chain as PEM. AMD's built-in roots are used when absent.
    #[arg(long, value_name = "FILE")]
    cert_chain: Option<PathBuf>,
    /// Verifier policy (TOML). Without one: authenticity, debug and TCB checks only.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Accept the development simulator's evidence (NOT confidential).
    #[arg(long)]
    allow_simulated: bool,
    /// Verification time, RFC 3339 or unix seconds (default: now).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: CollateralArgs,
}

/// Where missing endorsements are fetched and cached (`verify`, `attest`, `chat`, `gateway`).
#[derive(Debug, clap::Args)]
struct CollateralArgs {
    /// Never fetch collateral from the network; use files and the cache only.
    #[arg(long)]
    offline: bool,
    /// PCCS or Intel PCS base URL for TDX collateral.
    #[arg(long, value_name = "URL", env = "PCCS_URL")]
    pccs_url: Option<String>,
    /// Collateral cache directory.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

impl CollateralArgs {
    fn store(&self) -> CollateralStore {
        CollateralStore::new(
            self.cache_dir
                .clone()
                .unwrap_or_else(CollateralStore::default_dir),
            self.pccs_url.clone(),
            self.offline,
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Verify(args) => verify(args),
        Command::Measure(MeasureCommand::Tdx(args)) => measure_tdx(args),
        Command::Measure(MeasureCommand::Snp(args)) => measure_snp(args),
        Command::Measure(MeasureCommand::SnpIdBlock(args)) => snp_id_block(args),
        Command::Eventlog(args) => eventlog(args),
        Command::Attest(args) => remote_cmd::attest(
            args.url,
            args.policy.collateral(),
            &args.policy.policy,
            args.policy.allow_simulated,
            args.json,
            args.write_policy,
        ),
        Command::Chat(args) => remote_cmd::chat(remote_cmd::ChatOptions {
            collateral: args.policy.collateral(),
            url: args.url,
            prompt: args.prompt,
            interactive: args.interactive,
            json: args.json,
            policy: args.policy.policy,
            allow_simulated: args.policy.allow_simulated,
            max_tokens: args.max_tokens,
            model: args.model,
            temperature: args.temperature,
            system: args.system,
        }),
        Command::Gateway(args) => remote_cmd::gateway(
            args.listen,
            args.upstream,
            args.policy.collateral(),
            &args.policy.policy,
            args.policy.allow_simulated,
            args.session_ttl,
        ),
        Command::Image(ImageCommand::Build {
            recipe,
            out,
            cache,
            json,
        }) => image_cmd::build(&recipe, &out, cache, json),
        Command::Image(ImageCommand::Verify { dir, json }) => image_cmd::verify(&dir, json),
        Command::Image(ImageCommand::Policy {
            dir,
            allow_simulated,
            out,
        }) => image_cmd::policy(&dir, allow_simulated, out.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Warnings and errors to stderr; `CHRYSALIS_LOG` (an `EnvFilter` directive) for more. Without
/// it, a plain level filter: parsing directives costs more than some whole commands (`measure`).
fn init_logging() {
    let fmt = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match tracing_subscriber::EnvFilter::try_from_env("CHRYSALIS_LOG") {
        Ok(filter) => fmt.with_env_filter(filter).try_init(),
        Err(_) => fmt.with_max_level(tracing::Level::WARN).try_init(),
    };
}

fn now_or(at: Option<&str>) -> Result<Timestamp, UsageError> {
    match at {
        Some(text) => Timestamp::parse(text).map_err(|e| UsageError {
            path: "--at".into(),
            reason: e.to_string(),
        }),
        None => Ok(chrysalis_client::inputs::now()),
    }
}

fn verify(args: VerifyArgs) -> Result<ExitCode, UsageError> {
    let now = now_or(args.at.as_deref())?;
    let policy = load_policy(args.policy.as_deref(), args.allow_simulated)?;
    let loaded = load_evidence(&args.evidence)?;
    let files = EndorsementFiles {
        collateral: args.collateral.as_deref(),
        vcek: args.vcek.as_deref(),
        cert_chain: args.cert_chain.as_deref(),
    };
    let (platform, result) = match loaded {
        Err(e) => (None, Err(VerifyError::Parse(e))),
        Ok((evidence, bundle)) => {
            let mut endorsements = load_endorsements(bundle.as_ref(), &files)?;
            let store = args.store.store();
            // Fill in missing endorsements from the cache or the vendor's service.
            match &evidence {
                Evidence::Tdx(q) if endorsements.tdx_collateral.is_none() => {
                    match store.tdx(q, now) {
                        Ok(c) => endorsements.tdx_collateral = Some(c),
                        Err(e) => tracing::warn!("{e}"),
                    }
                }
                Evidence::Snp(r) if endorsements.vcek.is_none() => match store.snp(r) {
                    Ok((der, chain)) => {
                        endorsements.vcek =
                            chrysalis_attestation::snp::parse_certificate("VCEK", &der).ok();
                        if endorsements.cert_chain.is_empty() {
                            if let Some(pem) = chain {
                                endorsements.cert_chain =
                                    chrysalis_attestation::snp::parse_pem_chain(&pem)
                                        .unwrap_or_default();
                            }
                        }
                    }
                    Err(e) => tracing::warn!("{e}"),
                },
                _ => {}
            }
            if evidence.platform() == Platform::Simulated {
                tracing::warn!("{SIMULATED_WARNING}");
            }
            (
                Some(evidence.platform()),
                Verifier::new().verify(&evidence, &endorsements, &policy, now),
            )
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&verdict_json(platform, &result)).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            verdict_text(platform, &result, chrysalis_client::report::stdout_colour())
        );
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn usage(what: &str, reason: impl std::fmt::Display) -> UsageError {
    UsageError {
        path: what.to_string(),
        reason: reason.to_string(),
    }
}

/// `--memory`: bytes, or a number with K, M, G or T (binary units).
fn parse_size(text: &str) -> Result<u64, UsageError> {
    chrysalis_attestation::measure::parse_size(text).ok_or_else(|| {
        usage(
            "--memory",
            format!("not a size: {text:?} (bytes, or a number with K, M, G or T)"),
        )
    })
}

fn measure_failed(e: chrysalis_attestation::measure::MeasureError) -> UsageError {
    usage("measure", e)
}

fn measure_tdx(args: MeasureTdxArgs) -> Result<ExitCode, UsageError> {
    use chrysalis_attestation::measure::{InitrdToken, PageAddOrder, PlatformSpec, VmSpec};
    let spec = VmSpec {
        platform: PlatformSpec::Tdx {
            page_add_order: if args.two_pass {
                PageAddOrder::TwoPass
            } else {
                PageAddOrder::SinglePass
            },
            qemu_patches_kernel_header: !args.unpatched_kernel,
            initrd_token: if args.initrd_token_first {
                InitrdToken::Prepend
            } else {
                InitrdToken::Append
            },
        },
        firmware: args.firmware,
        kernel: args.boot.kernel,
        initrd: args.boot.initrd,
        cmdline: args.boot.cmdline,
        memory: parse_size(&args.memory)?,
        vcpus: args.vcpus,
    };
    use chrysalis_attestation::measure::AcpiDigests;
    let a = &args.acpi;
    let acpi = match (
        &a.acpi_from_eventlog,
        &a.acpi_loader,
        &a.acpi_rsdp,
        &a.acpi_tables,
    ) {
        (Some(log), ..) => {
            Some(AcpiDigests::from_replay(&replay_log_file(log)?).map_err(measure_failed)?)
        }
        (None, Some(l), Some(r), Some(t)) => {
            let read =
                |p: &PathBuf| std::fs::read(p).map_err(|e| usage(&p.display().to_string(), e));
            Some(AcpiDigests::of_blobs(&read(l)?, &read(r)?, &read(t)?))
        }
        _ => None,
    };
    let mut m = spec
        .measure_tdx_with(acpi.as_ref())
        .map_err(measure_failed)?;
    if let Some(path) = &args.acpi.acpi_from_eventlog {
        m.notes.push(format!(
            "rtmr0's three ACPI digests were taken from {}; its other events were computed",
            path.display()
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&m).unwrap_or_default());
    } else {
        println!("mr_td   {}", m.mr_td);
        for (i, r) in m.rtmr.iter().enumerate() {
            println!("rtmr{i}   {}", r.as_deref().unwrap_or("(not computed)"));
        }
        for n in &m.notes {
            println!("note: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn measure_snp(args: MeasureSnpArgs) -> Result<ExitCode, UsageError> {
    use chrysalis_attestation::measure::{PlatformSpec, VmSpec, VmmType};
    let features = hex_u64("--guest-features", &args.guest_features)?;
    let spec = VmSpec {
        platform: PlatformSpec::Snp {
            vcpu_type: args.vcpu_type,
            guest_features: features,
            vmm_type: match args.vmm_type {
                VmmArg::Qemu => VmmType::Qemu,
                VmmArg::Ec2 => VmmType::Ec2,
                VmmArg::Gce => VmmType::Gce,
            },
        },
        firmware: args.firmware,
        kernel: args.boot.kernel,
        initrd: args.boot.initrd,
        cmdline: args.boot.cmdline,
        memory: 0,
        vcpus: args.vcpus,
    };
    let digest = hex::encode(spec.measure_snp().map_err(measure_failed)?);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "measurement": digest, "vm": spec })
        );
    } else {
        println!("{digest}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A fixed-length hex flag; absent means zeros.
fn hex_field<const N: usize>(
    what: &'static str,
    text: Option<&str>,
) -> Result<[u8; N], UsageError> {
    text.map_or(Ok([0; N]), |t| {
        chrysalis_attestation::evidence::hex_array(what, t).map_err(|e| usage(what, e))
    })
}

/// A hex number flag (`0x` optional).
fn hex_u64(what: &str, text: &str) -> Result<u64, UsageError> {
    u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).map_err(|e| usage(what, e))
}

fn snp_id_block(args: SnpIdBlockArgs) -> Result<ExitCode, UsageError> {
    use chrysalis_attestation::measure::snp_id::{
        parse_private_key, sign_id_block, IdBlock, IdBlockFile,
    };
    let key = |path: &PathBuf| {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|e| usage(&path.display().to_string(), e))?,
        );
        parse_private_key(&bytes).map_err(|e| usage(&path.display().to_string(), e))
    };
    let policy = hex_u64("--policy", &args.policy)?;
    let block = IdBlock {
        launch_digest: hex_field("--measurement", Some(&args.measurement))?,
        family_id: hex_field("--family-id", args.family_id.as_deref())?,
        image_id: hex_field("--image-id", args.image_id.as_deref())?,
        guest_svn: args.guest_svn,
        policy,
    };
    let id_key = key(&args.id_key)?;
    let author_key = args.author_key.as_ref().map(key).transpose()?;
    let signed = sign_id_block(&block, &id_key, author_key.as_ref());
    let file = IdBlockFile::new(&signed).map_err(measure_failed)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&file).unwrap_or_default()
        );
    } else {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        println!("id_key_digest      {}", file.id_key_digest);
        println!(
            "author_key_digest  {}",
            file.author_key_digest
                .as_deref()
                .unwrap_or("(no author key)")
        );
        println!(
            "qemu sev-snp-guest id-block={},id-auth={},author-key-enabled={}",
            b64.encode(signed.id_block),
            b64.encode(&signed.id_auth),
            if file.author_key_enabled { "on" } else { "off" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Replay an event log file: a JSON event list, or a CCEL log area (TCG crypto-agile).
fn replay_log_file(
    path: &PathBuf,
) -> Result<chrysalis_attestation::measure::eventlog::Replay, UsageError> {
    use chrysalis_attestation::measure::eventlog::{replay_ccel, replay_json};
    let bytes = std::fs::read(path).map_err(|e| usage(&path.display().to_string(), e))?;
    let rtmrs = if bytes.trim_ascii_start().starts_with(b"[") {
        let text =
            String::from_utf8(bytes).map_err(|_| usage("event log", "JSON log is not UTF-8"))?;
        replay_json(&text)
    } else {
        replay_ccel(&bytes)
    }
    .map_err(measure_failed)?;
    Ok(rtmrs.into_replay())
}

fn eventlog(args: EventlogArgs) -> Result<ExitCode, UsageError> {
    let replay = replay_log_file(&args.file)?;
    // Compare with the quote's RTMRs (the quote's own fields, read without verifying it: use
    // `chrysalis verify` for authenticity).
    let quote_rtmrs: Option<[String; 4]> = match &args.quote {
        None => None,
        Some(path) => {
            let content = std::fs::read(path).map_err(|e| usage(&path.display().to_string(), e))?;
            let (evidence, _) = chrysalis_client::inputs::decode_evidence(&content)
                .map_err(|e| usage("--quote", e))?;
            let chrysalis_attestation::Evidence::Tdx(q) = evidence else {
                return Err(usage("--quote", "not a TDX quote"));
            };
            Some(q.unverified_rtmrs().map(hex::encode))
        }
    };
    let matches: Option<Vec<bool>> = quote_rtmrs
        .as_ref()
        .map(|q| q.iter().zip(&replay.rtmr).map(|(a, b)| a == b).collect());
    let all_match = matches.as_ref().is_none_or(|m| m.iter().all(|x| *x));
    if args.json {
        let mut out = serde_json::json!({ "rtmr": replay.rtmr, "events": replay.events });
        if let (Some(q), Some(m), Some(obj)) = (&quote_rtmrs, &matches, out.as_object_mut()) {
            obj.insert("quote_rtmr".into(), serde_json::json!(q));
            obj.insert("rtmr_match".into(), serde_json::json!(m));
            obj.insert("all_match".into(), serde_json::json!(all_match));
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        for e in &replay.events {
            println!(
                "rtmr{} {:<34} {}  {}",
                e.rtmr,
                e.event_type_name,
                &e.digest[..16],
                e.description
            );
        }
        for (i, r) in replay.rtmr.iter().enumerate() {
            let verdict = match &matches {
                Some(m) if m.get(i).copied().unwrap_or(false) => "  matches the quote",
                Some(_) => "  DIFFERS from the quote",
                None => "",
            };
            println!("rtmr{i} {r}{verdict}");
        }
    }
    Ok(if all_match {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
