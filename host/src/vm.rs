//! VM supervision: the lifecycle state machine, QEMU processes, QMP, restarts with back-off.
//!
//! States: preparing → booting → attested → ready → (draining →) stopped, or failed (then
//! relaunched after a back-off, as a confidential guest cannot reboot in place). The host is
//! untrusted: "attested" means the enclave served evidence, which the host caches and relays for
//! clients to verify themselves; it never decides trust for them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrysalis_images::Manifest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::config::{PlatformKind, RestartPolicy, VmConfig};
use crate::qemu::{self, Launch};

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// Checking the image and building the command.
    Preparing,
    /// QEMU started; the enclave is not answering yet.
    Booting,
    /// The enclave served its evidence.
    Attested,
    /// Serving clients.
    Ready,
    /// Finishing its requests before stopping.
    Draining,
    /// Stopped for good.
    Stopped,
    /// Failed; relaunched after a back-off.
    Failed,
}

impl VmState {
    /// Lower-case name (metrics, API).
    pub fn name(self) -> &'static str {
        match self {
            VmState::Preparing => "preparing",
            VmState::Booting => "booting",
            VmState::Attested => "attested",
            VmState::Ready => "ready",
            VmState::Draining => "draining",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
        }
    }

    /// Every state, for metrics.
    pub const ALL: [VmState; 7] = [
        VmState::Preparing,
        VmState::Booting,
        VmState::Attested,
        VmState::Ready,
        VmState::Draining,
        VmState::Stopped,
        VmState::Failed,
    ];
}

/// Counters of one VM.
#[derive(Debug, Default)]
pub struct Counters {
    /// Relaunches after the first launch.
    pub restarts: AtomicU64,
    /// Client connections relayed.
    pub connections: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Bytes from clients to the enclave.
    pub bytes_in: AtomicU64,
    /// Bytes from the enclave to clients.
    pub bytes_out: AtomicU64,
    /// `/v1/attestation` answers served.
    pub attestation_fetches: AtomicU64,
    /// Connections refused because the VM was not ready.
    pub refused: AtomicU64,
}

/// What the rest of the host sees of a VM.
#[derive(Debug)]
pub struct VmHandle {
    /// Its configuration.
    pub config: VmConfig,
    state: watch::Sender<VmState>,
    guest: Mutex<Option<std::net::SocketAddr>>,
    /// The enclave's evidence bundle (protobuf), as last fetched.
    pub bundle: Mutex<Option<chrysalis_proto::EvidenceBundle>>,
    /// Counters.
    pub counters: Counters,
    /// The QEMU process id while running.
    pub pid: Mutex<Option<u32>>,
    /// The last failure.
    pub last_error: Mutex<Option<String>>,
    /// Every failure and exit, oldest first (at most 32).
    pub history: Mutex<Vec<String>>,
}

impl VmHandle {
    /// A handle in state preparing.
    pub fn new(config: VmConfig) -> Arc<Self> {
        Arc::new(VmHandle {
            config,
            state: watch::channel(VmState::Preparing).0,
            guest: Mutex::new(None),
            bundle: Mutex::new(None),
            counters: Counters::default(),
            pid: Mutex::new(None),
            last_error: Mutex::new(None),
            history: Mutex::new(Vec::new()),
        })
    }

    /// The current state.
    pub fn state(&self) -> VmState {
        *self.state.borrow()
    }

    /// Watch state changes.
    pub fn subscribe(&self) -> watch::Receiver<VmState> {
        self.state.subscribe()
    }

    fn set(&self, s: VmState) {
        let old = self.state();
        if old != s {
            tracing::info!(target: "chrysalis::host", vm = %self.config.name, from = old.name(), to = s.name(), "state");
            self.state.send_replace(s);
        }
    }

    /// The guest's forwarded address while it runs.
    pub fn guest_addr(&self) -> Option<std::net::SocketAddr> {
        self.guest.lock().ok().and_then(|g| *g)
    }

    /// Mark the VM ready with its guest at `addr`, without a QEMU (benchmarks of the relay).
    #[doc(hidden)]
    pub fn force_ready(&self, addr: std::net::SocketAddr) {
        if let Ok(mut g) = self.guest.lock() {
            *g = Some(addr);
        }
        self.set(VmState::Ready);
    }

    fn set_error(&self, e: &str) {
        tracing::warn!(target: "chrysalis::host", vm = %self.config.name, "{e}");
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e.to_string());
        }
        if let Ok(mut h) = self.history.lock() {
            if h.len() >= 32 {
                h.remove(0);
            }
            h.push(e.to_string());
        }
    }
}

/// Everything needed to launch a VM from its config: the command, the files, the measurements.
#[derive(Debug)]
pub struct Prepared {
    /// The launch.
    pub launch: Launch,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// The image manifest.
    pub manifest: Manifest,
}

/// Check the image and build the launch. `state_dir` holds the QMP socket and serial log.
pub fn prepare(
    vm: &VmConfig,
    state_dir: &std::path::Path,
    host_port: u16,
) -> Result<Prepared, String> {
    let manifest =
        Manifest::load(&vm.image).map_err(|e| format!("image {}: {e}", vm.image.display()))?;
    let report = manifest.verify(&vm.image);
    if !report.ok() {
        return Err(format!(
            "image {} does not match its manifest: {}",
            vm.image.display(),
            report.problems.join("; ")
        ));
    }
    let spec = match vm.platform {
        PlatformKind::Tdx => manifest.vm_spec(
            &vm.image,
            chrysalis_images::manifest::tdx_platform(),
            vm.memory_bytes(),
            vm.vcpus,
        ),
        PlatformKind::Snp => manifest.vm_spec(
            &vm.image,
            chrysalis_attestation::measure::PlatformSpec::Snp {
                vcpu_type: vm.cpu_type.clone().unwrap_or_else(|| "EPYC-Milan".into()),
                guest_features: 0x1,
                vmm_type: chrysalis_attestation::measure::VmmType::Qemu,
            },
            vm.memory_bytes(),
            vm.vcpus,
        ),
        // A plain VM: QEMU's default BIOS boots the kernel directly (no firmware file), with
        // the command-line token that makes the guest run the simulator.
        PlatformKind::None => Ok(chrysalis_attestation::measure::VmSpec {
            platform: chrysalis_images::manifest::tdx_platform(),
            firmware: PathBuf::new(),
            kernel: manifest.file(&vm.image, "kernel"),
            initrd: manifest.file(&vm.image, "initrd"),
            cmdline: Some(chrysalis_images::manifest::simulated_cmdline(
                &manifest.cmdline,
            )),
            memory: vm.memory_bytes(),
            vcpus: vm.vcpus,
        }),
    }
    .map_err(|e| e.to_string())?;
    let model_disk = manifest.file(&vm.image, "model_disk");
    std::fs::create_dir_all(state_dir).map_err(|e| format!("{}: {e}", state_dir.display()))?;
    let launch = Launch {
        spec,
        platform: vm.platform,
        accelerator: vm.accelerator,
        model_disk,
        gpus: vm.gpus.clone(),
        host_port,
        guest_port: vm.guest_port,
        qmp_socket: state_dir.join(format!("{}.qmp", vm.name)),
        serial_log: state_dir.join(format!("{}.serial.log", vm.name)),
        snp_host: if vm.platform == PlatformKind::Snp {
            qemu::SnpHost::detect()
        } else {
            None
        },
        snp_policy: vm.snp_policy.unwrap_or(0x30000),
        snp_host_data: vm.host_data().map_err(|e| format!("vm {}: {e}", vm.name))?,
        snp_id_block: None,
        mr_config_id: vm.mr_config_id.clone(),
        vsock_cid: 3,
    };
    let mut launch = launch;
    if let Some(path) = &vm.snp_id_block {
        launch.snp_id_block = Some(load_id_block(path, &launch)?);
    }
    let args = qemu::command(&launch)?;
    Ok(Prepared {
        launch,
        qemu: vm.qemu.clone(),
        args,
        manifest,
    })
}

/// Read and check an SNP ID block for this launch: its signatures, and that it admits exactly
/// this launch's digest and policy (the firmware would refuse the launch otherwise, with no
/// clearer word than an error code).
fn load_id_block(path: &std::path::Path, launch: &Launch) -> Result<qemu::SnpIdBlock, String> {
    use chrysalis_attestation::measure::snp_id::IdBlockFile;
    let at = |e: &dyn std::fmt::Display| format!("snp_id_block {}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
    let file: IdBlockFile = serde_json::from_str(&text).map_err(|e| at(&e))?;
    let (verified, id_block, id_auth) = file.check().map_err(|e| at(&e))?;
    let block = &verified.block;
    if block.policy != launch.snp_policy {
        return Err(at(&format!(
            "it admits policy {:#x} but the VM is launched with {:#x}",
            block.policy, launch.snp_policy
        )));
    }
    let digest = launch.spec.measure_snp().map_err(|e| {
        at(&format!(
            "cannot compute this launch's digest to check it: {e}"
        ))
    })?;
    if block.launch_digest != digest {
        return Err(at(&format!(
            "it admits launch digest {} but this launch measures {}",
            hex::encode(block.launch_digest),
            hex::encode(digest)
        )));
    }
    Ok(qemu::SnpIdBlock {
        id_block,
        id_auth,
        author_key_enabled: file.author_key_enabled,
        id_key_digest: verified.id_key_digest,
        author_key_digest: verified.author_key_digest,
    })
}

/// The measurements this exact launch should produce, as JSON (for `--dry-run` and the API).
pub fn expected_measurements(p: &Prepared) -> serde_json::Value {
    match p.launch.platform {
        PlatformKind::Tdx => match p.launch.spec.measure_tdx() {
            Ok(m) => {
                serde_json::json!({"platform": "tdx", "mr_td": m.mr_td, "rtmr": m.rtmr, "notes": m.notes})
            }
            Err(e) => serde_json::json!({"platform": "tdx", "error": e.to_string()}),
        },
        PlatformKind::Snp => match p.launch.spec.measure_snp() {
            Ok(m) => {
                let id = p.launch.snp_id_block.as_ref();
                serde_json::json!({
                    "platform": "snp",
                    "measurement": hex::encode(m),
                    "host_data": p.launch.snp_host_data.map(hex::encode),
                    "id_key_digest": id.map(|i| hex::encode(i.id_key_digest)),
                    "author_key_digest": id.and_then(|i| i.author_key_digest.map(hex::encode)),
                })
            }
            Err(e) => serde_json::json!({"platform": "snp", "error": e.to_string()}),
        },
        PlatformKind::None => serde_json::json!({
            "platform": "simulated",
            "measurement": p.manifest.measurements.simulated,
            "warning": "platform none runs the enclave's simulator: NOT CONFIDENTIAL",
        }),
    }
}

/// A free loopback port for the guest forward.
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Send one QMP command and read its answer.
pub async fn qmp(socket: &std::path::Path, command: &str) -> Result<serde_json::Value, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("QMP {}: {e}", socket.display()))?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    qmp_reply(&mut lines).await?; // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await
        .map_err(|e| format!("QMP: {e}"))?;
    qmp_reply(&mut lines).await?;
    w.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
        .await
        .map_err(|e| format!("QMP: {e}"))?;
    qmp_reply(&mut lines).await
}

/// The next non-event QMP message.
async fn qmp_reply(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Result<serde_json::Value, String> {
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| format!("QMP: {e}"))?
            .ok_or("QMP closed")?;
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("QMP: {e}"))?;
        if v.get("event").is_none() {
            return Ok(v);
        }
    }
}

/// Is the enclave answering, and what evidence does it serve? (Unverified: the host relays it.)
async fn probe(addr: std::net::SocketAddr) -> Result<chrysalis_proto::EvidenceBundle, String> {
    let mut c = chrysalis_client::remote::connect_unverified(addr)
        .await
        .map_err(|e| e.to_string())?;
    let h = c
        .health(chrysalis_proto::HealthRequest {})
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    if !h.status.starts_with("serving") {
        return Err(format!("enclave status {:?}", h.status));
    }
    let b = c
        .attest(chrysalis_proto::AttestRequest { nonce: vec![] })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    Ok(b)
}

/// Run one VM until `shutdown` turns true: launch, watch, relaunch with back-off.
pub async fn supervise(vm: Arc<VmHandle>, state_dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    let mut first = true;
    loop {
        if *shutdown.borrow() {
            vm.set(VmState::Stopped);
            return;
        }
        vm.set(VmState::Preparing);
        let prepared = free_port().and_then(|port| prepare(&vm.config, &state_dir, port));
        let prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                if launch_failed(&vm, &e, &mut failures, &mut shutdown).await {
                    continue;
                }
                return;
            }
        };
        if !first {
            vm.counters.restarts.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let _ = std::fs::remove_file(&prepared.launch.qmp_socket);
        let mut child = match tokio::process::Command::new(&prepared.qemu)
            .args(&prepared.args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let e = format!("{}: {e}", prepared.qemu.display());
                if launch_failed(&vm, &e, &mut failures, &mut shutdown).await {
                    continue;
                }
                return;
            }
        };
        if let Ok(mut p) = vm.pid.lock() {
            *p = child.id();
        }
        let stderr = child.stderr.take();
        let stderr_task = tokio::spawn(async move {
            let mut out = String::new();
            if let Some(s) = stderr {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if out.len() < 4096 {
                        out.push_str(&l);
                        out.push('\n');
                    }
                }
            }
            out
        });
        vm.set(VmState::Booting);
        let guest = std::net::SocketAddr::from(([127, 0, 0, 1], prepared.launch.host_port));
        if let Ok(mut g) = vm.guest.lock() {
            *g = Some(guest);
        }
        let started = Instant::now();
        let mut ready_since: Option<Instant> = None;
        let mut last_probe = Instant::now() - Duration::from_secs(10);
        let outcome: Result<std::process::ExitStatus, String> = loop {
            tokio::select! {
                status = child.wait() => break status.map_err(|e| e.to_string()),
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        drain_and_stop(&vm, &prepared, &mut child).await;
                        vm.set(VmState::Stopped);
                        return;
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            let state = vm.state();
            let interval = if state == VmState::Ready {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(2)
            };
            if last_probe.elapsed() >= interval {
                last_probe = Instant::now();
                match probe(guest).await {
                    Ok(bundle) => {
                        let mut changed = true;
                        if let Ok(mut b) = vm.bundle.lock() {
                            changed = b.as_ref().map(|b| &b.hpke_public_key)
                                != Some(&bundle.hpke_public_key);
                            // The same evidence keeps the cached bundle, with any endorsements
                            // the API added to it.
                            if b.as_ref().map(|b| &b.evidence) != Some(&bundle.evidence) {
                                *b = Some(bundle);
                            }
                        }
                        if state == VmState::Booting || changed {
                            vm.set(VmState::Attested);
                            tracing::info!(target: "chrysalis::host", vm = %vm.config.name, secs = started.elapsed().as_secs_f64(), "enclave up; evidence cached");
                        }
                        if vm.state() == VmState::Attested {
                            vm.set(VmState::Ready);
                            ready_since = Some(Instant::now());
                        }
                    }
                    Err(e) if state == VmState::Ready => {
                        tracing::warn!(target: "chrysalis::host", vm = %vm.config.name, "health check failed: {e}");
                    }
                    Err(_) => {}
                }
            }
        };
        if let Ok(mut p) = vm.pid.lock() {
            *p = None;
        }
        if let Ok(mut g) = vm.guest.lock() {
            *g = None;
        }
        if let Ok(mut b) = vm.bundle.lock() {
            *b = None;
        }
        let qemu_err = stderr_task.await.unwrap_or_default();
        let clean = matches!(&outcome, Ok(s) if s.success());
        let msg = match &outcome {
            Ok(s) => format!(
                "QEMU exited ({s}){}",
                if qemu_err.is_empty() {
                    String::new()
                } else {
                    format!(": {}", qemu_err.trim())
                }
            ),
            Err(e) => format!("QEMU: {e}"),
        };
        vm.set_error(&msg);
        if ready_since.is_some_and(|t| t.elapsed() > Duration::from_secs(120)) {
            failures = 0;
        }
        match vm.config.restart {
            RestartPolicy::Never => {
                vm.set(if clean {
                    VmState::Stopped
                } else {
                    VmState::Failed
                });
                return;
            }
            RestartPolicy::OnFailure if clean => {
                vm.set(VmState::Stopped);
                return;
            }
            _ => {}
        }
        vm.set(VmState::Failed);
        failures += 1;
        if !backoff(failures, &mut shutdown).await {
            vm.set(VmState::Stopped);
            return;
        }
    }
}

/// A launch that could not start: record it, back off; false (and stopped) when shutdown came
/// first.
async fn launch_failed(
    vm: &VmHandle,
    error: &str,
    failures: &mut u32,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    vm.set_error(error);
    vm.set(VmState::Failed);
    *failures += 1;
    if backoff(*failures, shutdown).await {
        return true;
    }
    vm.set(VmState::Stopped);
    false
}

/// Wait 2^(n-1) seconds (at most 60); false when shutdown came first.
async fn backoff(failures: u32, shutdown: &mut watch::Receiver<bool>) -> bool {
    let secs = 1u64 << failures.saturating_sub(1).min(6);
    let secs = secs.min(60);
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(secs)) => !*shutdown.borrow(),
        _ = shutdown.changed() => !*shutdown.borrow(),
    }
}

async fn drain_and_stop(vm: &VmHandle, p: &Prepared, child: &mut tokio::process::Child) {
    vm.set(VmState::Draining);
    let deadline = Instant::now() + Duration::from_secs(vm.config.drain_seconds);
    while vm.counters.active.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Ask the guest to power off, then insist.
    let _ = qmp(&p.launch.qmp_socket, "system_powerdown").await;
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = qmp(&p.launch.qmp_socket, "quit").await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
    let _ = std::fs::remove_file(&p.launch.qmp_socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_attestation::measure::snp_id::{
        parse_private_key, sign_id_block, IdBlock, IdBlockFile,
    };
    use chrysalis_attestation::measure::{PlatformSpec, VmSpec, VmmType};

    /// An SNP launch of the real AmdSev OVMF `make fixtures` fetches (None when it is absent).
    fn snp_launch() -> Option<Launch> {
        let fw = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/fixtures/ovmf_AmdSev_suffix.bin");
        if !fw.exists() {
            if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() {
                panic!("{}: missing (run `make fixtures`)", fw.display());
            }
            eprintln!("SKIPPED: {} not fetched", fw.display());
            return None;
        }
        Some(Launch {
            spec: VmSpec {
                platform: PlatformSpec::Snp {
                    vcpu_type: "EPYC-Milan".into(),
                    guest_features: 1,
                    vmm_type: VmmType::Qemu,
                },
                firmware: fw,
                kernel: None,
                initrd: None,
                cmdline: None,
                memory: 1 << 30,
                vcpus: 2,
            },
            platform: PlatformKind::Snp,
            accelerator: crate::config::Accelerator::Kvm,
            model_disk: None,
            gpus: Vec::new(),
            host_port: 1,
            guest_port: 8443,
            qmp_socket: "/nonexistent/qmp".into(),
            serial_log: "/nonexistent/serial".into(),
            snp_host: None,
            snp_policy: 0x30000,
            snp_host_data: None,
            snp_id_block: None,
            mr_config_id: None,
            vsock_cid: 3,
        })
    }

    fn key(name: &str) -> p384::ecdsa::SigningKey {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../attestation/testdata/snp-id")
            .join(name);
        parse_private_key(&std::fs::read(p).expect("test key")).expect("P-384")
    }

    fn write(dir: &std::path::Path, digest: [u8; 48], policy: u64) -> PathBuf {
        let block = IdBlock {
            launch_digest: digest,
            family_id: [0; 16],
            image_id: [0; 16],
            guest_svn: 1,
            policy,
        };
        let signed = sign_id_block(&block, &key("id-key.pem"), Some(&key("author-key.pem")));
        let file = IdBlockFile::new(&signed).expect("file");
        let path = dir.join(format!("id-{policy:x}-{}.json", digest[0]));
        std::fs::write(&path, serde_json::to_string(&file).expect("json")).expect("write");
        path
    }

    #[test]
    fn an_id_block_must_admit_exactly_this_launch() {
        let Some(launch) = snp_launch() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let digest = launch
            .spec
            .measure_snp()
            .expect("launch digest of the real OVMF");
        let good = write(dir.path(), digest, 0x30000);
        let id = load_id_block(&good, &launch).expect("admits this launch");
        assert_eq!(id.id_block.len(), 96);
        assert!(id.author_key_enabled);

        let e = load_id_block(&write(dir.path(), digest, 0x70000), &launch).expect_err("policy");
        assert!(e.contains("policy 0x70000"), "{e}");
        let mut other = digest;
        other[0] ^= 1;
        let e = load_id_block(&write(dir.path(), other, 0x30000), &launch).expect_err("digest");
        assert!(e.contains("this launch measures"), "{e}");
        // One more vCPU is another launch digest.
        let mut bigger = launch.clone();
        bigger.spec.vcpus = 3;
        assert!(load_id_block(&good, &bigger).is_err());

        // A tampered file: its signature no longer verifies.
        let mut f: IdBlockFile =
            serde_json::from_str(&std::fs::read_to_string(&good).expect("read")).expect("json");
        f.id_auth.replace_range(200..202, "00");
        std::fs::write(&good, serde_json::to_string(&f).expect("json")).expect("write");
        let e = load_id_block(&good, &launch).expect_err("tampered");
        assert!(e.contains("signature"), "{e}");
        let e = load_id_block(&dir.path().join("missing.json"), &launch).expect_err("missing");
        assert!(e.contains("missing.json"), "{e}");
    }
}
