//! `chrysalis-host`: the host agent binary.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use chrysalis_host::config::HostConfig;
use chrysalis_host::{gpu, qemu, vm};
use clap::{Parser, Subcommand};

/// The Chrysalis host agent: boots and supervises confidential VMs, relays their clients and
/// their evidence. It is never trusted with what it serves.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the configured VMs in the foreground until interrupted (SIGINT/SIGTERM: drain, stop).
    Run {
        /// Host configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a configuration, its images and the QEMU it names; exit 0 when all is well.
    CheckConfig {
        /// Host configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Build a VM's launch: with --dry-run, print the exact QEMU command line and the
    /// measurements the VM should report.
    Launch {
        /// Host configuration (TOML).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The VM (default: the only one).
        #[arg(long)]
        vm: Option<String>,
        /// Print instead of running.
        #[arg(long, required = true)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// GPUs: list, bind to vfio-pci, give back.
    #[command(subcommand)]
    Gpus(GpuCommand),
    /// Report host support for TDX and SEV-SNP guests (KVM parameters, QEMU version).
    CheckHost {
        /// QEMU binary.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// Accelerator QEMU is asked through (`query-sev-capabilities` needs kvm).
        #[arg(long, default_value = "kvm")]
        accel: AccelArg,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AccelArg {
    Kvm,
    Tcg,
}

#[derive(Debug, Subcommand)]
enum GpuCommand {
    /// List NVIDIA GPUs with driver and IOMMU group (and CC mode, with --gpu-admin-tools).
    List {
        /// sysfs root.
        #[arg(long, default_value = "/sys")]
        sysfs: PathBuf,
        /// NVIDIA gpu-admin-tools' nvidia_gpu_tools.py, to read each GPU's CC mode.
        #[arg(long, value_name = "FILE")]
        gpu_admin_tools: Option<PathBuf>,
    },
    /// Bind a GPU to vfio-pci for passthrough.
    Bind {
        /// PCI address.
        address: String,
        /// sysfs root.
        #[arg(long, default_value = "/sys")]
        sysfs: PathBuf,
    },
    /// Give a GPU back to its default driver.
    Unbind {
        /// PCI address.
        address: String,
        /// sysfs root.
        #[arg(long, default_value = "/sys")]
        sysfs: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHRYSALIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chrysalis-host: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let c = HostConfig::load(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async move {
                let running = chrysalis_host::start(c).await?;
                println!(
                    "chrysalis-host: api on http://{}, clients on {}",
                    running.api_addr,
                    running
                        .client_addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                shutdown_signal().await;
                eprintln!("chrysalis-host: draining and stopping");
                running.stop().await;
                Ok::<_, anyhow::Error>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let c = HostConfig::load(&config)?;
            let mut ok = true;
            for v in &c.vms {
                let res = qemu::QemuVersion::of(&v.qemu)
                    .and_then(|ver| qemu::check_support(ver, v.platform, v.gpus.len()).map(|_| ver))
                    .and_then(|ver| vm::prepare(v, &std::env::temp_dir(), 1).map(|_| ver));
                match res {
                    Ok(ver) => println!(
                        "ok    vm {}: image {} verified, QEMU {ver}",
                        v.name,
                        v.image.display()
                    ),
                    Err(e) => {
                        ok = false;
                        println!("FAIL  vm {}: {e}", v.name);
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Launch {
            config,
            vm: name,
            dry_run: _,
            json,
        } => {
            let c = HostConfig::load(&config)?;
            let v = match &name {
                Some(n) => c.vm(n)?,
                None if c.vms.len() == 1 => match c.vms.first() {
                    Some(only) => c.vm(&only.name)?,
                    None => anyhow::bail!("no VMs configured"),
                },
                None => anyhow::bail!("several VMs: name one with --vm"),
            };
            let p = vm::prepare(v, &c.state_dir, 0).map_err(anyhow::Error::msg)?;
            let expected = vm::expected_measurements(&p);
            let mut cmd = vec![p.qemu.display().to_string()];
            cmd.extend(p.args.iter().cloned());
            if json {
                println!(
                    "{:#}",
                    serde_json::json!({"command": cmd, "expected": expected, "note": "host_port 0 is chosen at launch"})
                );
            } else {
                println!(
                    "# QEMU command for vm {} (the guest forward port is chosen at launch)",
                    v.name
                );
                println!("{}", qemu::shell_quote(&cmd));
                println!("# expected measurements");
                println!("{expected:#}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gpus(GpuCommand::List {
            sysfs,
            gpu_admin_tools,
        }) => {
            let s = gpu::Sysfs { root: sysfs };
            let gpus = s.gpus()?;
            if gpus.is_empty() {
                println!("no NVIDIA GPU found");
            }
            for g in gpus {
                let cc = match &gpu_admin_tools {
                    None => "CC mode unknown (pass --gpu-admin-tools)".to_string(),
                    Some(_) if g.driver.as_deref() == Some("vfio-pci") => {
                        "CC mode unknown (bound to vfio-pci: unbind to query)".to_string()
                    }
                    Some(tool) => match gpu::query_cc_mode(tool, &g.address) {
                        Ok(gpu::CcMode::On) => "CC mode on".to_string(),
                        Ok(gpu::CcMode::Devtools) => {
                            "CC mode devtools (NOT for production)".to_string()
                        }
                        Ok(gpu::CcMode::Off) => {
                            "CC mode OFF (a confidential VM needs it on)".to_string()
                        }
                        Err(e) => format!("CC mode unknown: {e}"),
                    },
                };
                println!(
                    "{}  device {}  driver {}  iommu group {}  {cc}",
                    g.address,
                    g.device,
                    g.driver.as_deref().unwrap_or("none"),
                    g.iommu_group
                        .as_deref()
                        .unwrap_or("NONE (passthrough impossible)")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gpus(GpuCommand::Bind { address, sysfs }) => {
            gpu::Sysfs { root: sysfs }
                .bind_vfio(&address)
                .map_err(anyhow::Error::msg)?;
            println!("{address}: bound to vfio-pci");
            Ok(ExitCode::SUCCESS)
        }
        Command::Gpus(GpuCommand::Unbind { address, sysfs }) => {
            gpu::Sysfs { root: sysfs }
                .unbind_vfio(&address)
                .map_err(anyhow::Error::msg)?;
            println!("{address}: given back to its default driver");
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckHost { qemu: q, accel } => {
            let s = gpu::Sysfs::default();
            for (k, v) in s.kvm_support() {
                println!("{k:<18} {v}");
            }
            println!(
                "/dev/kvm           {}",
                if std::path::Path::new("/dev/kvm").exists() {
                    "present"
                } else {
                    "absent"
                }
            );
            match qemu::QemuVersion::of(&q) {
                Ok(v) => {
                    println!("QEMU               {v}");
                    for (p, what) in [
                        (chrysalis_host::config::PlatformKind::Tdx, "TDX"),
                        (chrysalis_host::config::PlatformKind::Snp, "SNP"),
                    ] {
                        match qemu::check_support(v, p, 0) {
                            Ok(()) => println!("{what:<18} supported by this QEMU"),
                            Err(e) => println!("{what:<18} {e}"),
                        }
                    }
                }
                Err(e) => println!("QEMU               {e}"),
            }
            let cpuid = qemu::SnpHost::detect();
            match cpuid {
                Some(h) => println!(
                    "SEV C-bit (CPUID)  {} (reduced phys bits {})",
                    h.cbitpos, h.reduced_phys_bits
                ),
                None => println!("SEV (CPUID)        not reported by this CPU"),
            }
            let accel = match accel {
                AccelArg::Kvm => chrysalis_host::config::Accelerator::Kvm,
                AccelArg::Tcg => chrysalis_host::config::Accelerator::Tcg,
            };
            let rt = tokio::runtime::Runtime::new()?;
            match rt.block_on(qemu::query_sev_capabilities(
                &q,
                accel,
                std::time::Duration::from_secs(15),
            )) {
                Ok(c) => {
                    println!(
                        "SEV (QEMU/KVM)     available: C-bit {}, reduced phys bits {}, cpu0-id {}",
                        c.cbitpos, c.reduced_phys_bits, c.cpu0_id
                    );
                    if let Some(h) = cpuid.filter(|h| {
                        (h.cbitpos, h.reduced_phys_bits) != (c.cbitpos, c.reduced_phys_bits)
                    }) {
                        println!(
                            "WARNING            CPUID says C-bit {} / {}, QEMU says {} / {}: launches use CPUID's",
                            h.cbitpos, h.reduced_phys_bits, c.cbitpos, c.reduced_phys_bits
                        );
                    }
                }
                Err(e) => println!("SEV (QEMU/KVM)     not available: {e}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    } else {
        let _ = ctrl_c.await;
    }
}
