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
        mr_config_id: vm.mr_config_id.clone(),
        vsock_cid: 3,
    };
    let args = qemu::command(&launch)?;
    Ok(Prepared {
        launch,
        qemu: vm.qemu.clone(),
        args,
        manifest,
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
            Ok(m) => serde_json::json!({"platform": "snp", "measurement": hex::encode(m)}),
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
                vm.set_error(&e);
                vm.set(VmState::Failed);
                failures += 1;
                if backoff(failures, &mut shutdown).await {
                    continue;
                }
                vm.set(VmState::Stopped);
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
                vm.set_error(&format!("{}: {e}", prepared.qemu.display()));
                vm.set(VmState::Failed);
                failures += 1;
                if backoff(failures, &mut shutdown).await {
                    continue;
                }
                vm.set(VmState::Stopped);
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
