//! The Chrysalis host agent, run by datacenter operators.
//!
//! - [`config`]: the fail-closed host configuration.
//! - [`qemu`]: the typed QEMU command builder, from the same `VmSpec` the measurement code takes.
//! - [`vm`]: the VM lifecycle state machine, QMP, restarts with back-off.
//! - [`relay`]: the client relay (TLS and sealed bytes only).
//! - [`api`]: `/v1/attestation`, `/healthz`, `/metrics`.
//! - [`gpu`]: GPU listing and vfio-pci binding over sysfs; KVM support checks.
//!
//! The host is untrusted by design: it never sees a key or a prompt, and clients verify the
//! evidence it relays themselves.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod gpu;
pub mod qemu;
pub mod relay;
pub mod vm;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::HostConfig;
use crate::vm::VmHandle;

/// A running host agent.
#[derive(Debug)]
pub struct Running {
    /// The VMs.
    pub vms: Arc<Vec<Arc<VmHandle>>>,
    /// The API's address.
    pub api_addr: std::net::SocketAddr,
    /// Client ports, per VM.
    pub client_addrs: Vec<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Drain and stop every VM, then return.
    pub async fn stop(self) {
        self.shutdown.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Start everything: bind the API and client ports first (so a port clash fails at once), then
/// supervise each VM.
pub async fn start(config: HostConfig) -> anyhow::Result<Running> {
    for vm in &config.vms {
        let v = qemu::QemuVersion::of(&vm.qemu).map_err(anyhow::Error::msg)?;
        qemu::check_support(v, vm.platform, vm.gpus.len())
            .map_err(|e| anyhow::anyhow!("vm {}: {e}", vm.name))?;
    }
    let (tx, rx) = watch::channel(false);
    let vms: Arc<Vec<Arc<VmHandle>>> =
        Arc::new(config.vms.iter().cloned().map(VmHandle::new).collect());
    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|e| anyhow::anyhow!("api {}: {e}", config.api.listen))?;
    let api_addr = api_listener.local_addr()?;
    let mut tasks = Vec::new();
    let mut client_addrs = Vec::new();
    for vm in vms.iter() {
        let l = tokio::net::TcpListener::bind(vm.config.client_listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "vm {} client_listen {}: {e}",
                    vm.config.name,
                    vm.config.client_listen
                )
            })?;
        client_addrs.push(l.local_addr()?);
        tasks.push(tokio::spawn(relay::serve(l, vm.clone(), rx.clone())));
        tasks.push(tokio::spawn(vm::supervise(
            vm.clone(),
            config.state_dir.clone(),
            rx.clone(),
        )));
    }
    let app = api::router(api::Api {
        vms: vms.clone(),
        collateral: Some(config.collateral_store()),
        now: None,
    });
    let mut api_rx = rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(api_listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_rx.wait_for(|s| *s).await;
            })
            .await;
    }));
    tracing::info!(target: "chrysalis::host", api = %api_addr, "host agent started");
    Ok(Running {
        vms,
        api_addr,
        client_addrs,
        shutdown: tx,
        tasks,
    })
}
