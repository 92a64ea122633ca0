//! The enclave as the guest's init (PID 1 of an image's initramfs).
//!
//! It mounts the kernel file systems, loads the image's kernel modules, configures the network,
//! copies the model from its read-only disk (refusing one whose SHA-256 differs from the digest
//! in the measured guest configuration), then runs the enclave service with the image's
//! arguments. Any failure powers the VM off, so the host agent sees a stopped VM rather than a
//! half-started enclave.

pub mod sys;

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use chrysalis_proto::guest::{GuestConfig, GuestModel, GUEST_CONFIG_PATH, SIMULATED_CMDLINE_TOKEN};
use sha2::{Digest, Sha256};

/// Whether this process is the guest's init.
pub fn is_init() -> bool {
    std::process::id() == 1
}

/// What the init prepared for the service.
#[derive(Debug)]
pub struct Prepared {
    /// `chrysalis-enclave` arguments (argv[0] first).
    pub args: Vec<String>,
    /// The kernel command line (`/proc/cmdline`).
    pub cmdline: String,
}

fn mount_kernel_fs() {
    let mounts: [(&str, &str, &str, libc::c_ulong); 6] = [
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID),
        (
            "proc",
            "/proc",
            "proc",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        ),
        ("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV),
        ("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV),
        ("configfs", "/sys/kernel/config", "configfs", 0),
    ];
    for (src, target, fs, flags) in mounts {
        // configfs is a module on Debian kernels: mounted again after the modules load.
        if let Err(e) = sys::mount(src, target, fs, flags) {
            if e.raw_os_error() != Some(libc::EBUSY) && fs != "configfs" {
                eprintln!("chrysalis-init: mount {target}: {e}");
            }
        }
    }
}

fn load_modules(paths: &[String]) {
    for p in paths {
        let result = std::fs::File::open(p).and_then(|f| sys::finit_module(&f));
        match result {
            Ok(()) => eprintln!("chrysalis-init: loaded {p}"),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            // The TDX and SNP guest drivers refuse to load on other platforms.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV) | Some(libc::ENXIO)) => {
                eprintln!("chrysalis-init: {p}: no such device here (skipped)")
            }
            Err(e) => eprintln!("chrysalis-init: {p}: {e}"),
        }
    }
}

/// Copy the model from its disk into `/run/models`, checking its digest against the measured
/// guest configuration. Returns the path.
fn stage_model(m: &GuestModel) -> anyhow::Result<String> {
    let mut disk =
        std::fs::File::open(&m.device).with_context(|| format!("model disk {}", m.device))?;
    let dir = Path::new("/run/models");
    std::fs::create_dir_all(dir)?;
    let name = Path::new(&m.file_name)
        .file_name()
        .context("model file name")?;
    let path = dir.join(name);
    let mut out = std::fs::File::create(&path)?;
    let mut hasher = Sha256::new();
    let mut left = m.size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let chunk = buf.get_mut(..want).context("buffer")?;
        let n = disk.read(chunk)?;
        if n == 0 {
            anyhow::bail!(
                "model disk {}: shorter than the model ({} bytes)",
                m.device,
                m.size
            );
        }
        let got = chunk.get(..n).context("buffer")?;
        hasher.update(got);
        std::io::Write::write_all(&mut out, got)?;
        left -= n as u64;
    }
    let digest = hex::encode(hasher.finalize());
    if digest != m.sha256 {
        let _ = std::fs::remove_file(&path);
        anyhow::bail!(
            "model disk {}: sha256 {digest}, the image's measured configuration pins {}; refusing it",
            m.device,
            m.sha256
        );
    }
    eprintln!(
        "chrysalis-init: model {} staged (sha256 ok)",
        path.display()
    );
    Ok(path.display().to_string())
}

/// The service arguments: the image's, with `--tee simulated` when the host launched the image
/// in the simulator (the command-line token, itself measured), and the staged model.
pub fn service_args(config: &GuestConfig, cmdline: &str, model: Option<String>) -> Vec<String> {
    let mut args = vec!["chrysalis-enclave".to_string()];
    let simulated = cmdline
        .split_whitespace()
        .any(|w| w == SIMULATED_CMDLINE_TOKEN);
    let mut it = config.enclave_args.iter();
    while let Some(a) = it.next() {
        if simulated && a == "--tee" {
            it.next();
            continue;
        }
        if simulated && a.starts_with("--tee=") {
            continue;
        }
        args.push(a.clone());
    }
    if simulated {
        args.push("--tee".into());
        args.push("simulated".into());
    }
    if let Some(m) = model {
        args.push("--model".into());
        args.push(m);
    }
    args
}

/// Prepare the guest. Errors are fatal: the caller powers off.
pub fn prepare() -> anyhow::Result<Prepared> {
    mount_kernel_fs();
    let text = std::fs::read_to_string(GUEST_CONFIG_PATH)
        .with_context(|| GUEST_CONFIG_PATH.to_string())?;
    let config = GuestConfig::from_json(&text).map_err(anyhow::Error::msg)?;
    load_modules(&config.modules);
    let _ = sys::mount("configfs", "/sys/kernel/config", "configfs", 0);
    sys::configure_interface("lo", Some((std::net::Ipv4Addr::LOCALHOST, 8))).context("loopback")?;
    if let Some(n) = &config.network {
        sys::configure_interface(&n.interface, Some((n.address, n.prefix)))
            .with_context(|| format!("interface {}", n.interface))?;
        eprintln!(
            "chrysalis-init: {} is {}/{}",
            n.interface, n.address, n.prefix
        );
    }
    let model = config.model.as_ref().map(stage_model).transpose()?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("/proc/cmdline")?;
    let args = service_args(&config, &cmdline, model);
    Ok(Prepared {
        args,
        cmdline: cmdline.trim_end_matches('\n').to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> GuestConfig {
        GuestConfig {
            format: chrysalis_proto::guest::GUEST_CONFIG_FORMAT.into(),
            modules: vec![],
            network: None,
            model: None,
            enclave_args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_simulator_only_when_the_measured_command_line_says_so() {
        let c = config(&["--tee", "auto", "--listen", "0.0.0.0:8443"]);
        assert_eq!(
            service_args(&c, "console=ttyS0 initrd=initrd\n", None),
            [
                "chrysalis-enclave",
                "--tee",
                "auto",
                "--listen",
                "0.0.0.0:8443"
            ]
        );
        assert_eq!(
            service_args(
                &c,
                "console=ttyS0 chrysalis.tee=simulated",
                Some("/run/models/m.gguf".into())
            ),
            [
                "chrysalis-enclave",
                "--listen",
                "0.0.0.0:8443",
                "--tee",
                "simulated",
                "--model",
                "/run/models/m.gguf"
            ]
        );
        // A token that merely contains the text does not count.
        assert_eq!(
            service_args(&c, "xchrysalis.tee=simulated", None)
                .get(2)
                .map(String::as_str),
            Some("auto")
        );
    }
}
