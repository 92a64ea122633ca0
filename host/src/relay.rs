//! The client relay: TCP from the client port to the enclave's forwarded port. It carries only
//! the client's TLS (RA-TLS to the enclave) and the sealed bytes inside it; it never terminates
//! TLS and cannot read what it carries. Connections are refused while the VM is not ready.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::vm::{VmHandle, VmState};

/// Serve the client port of a VM until shutdown.
pub async fn serve(listener: TcpListener, vm: Arc<VmHandle>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (client, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(target: "chrysalis::host", "accept: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let guest = match (vm.state(), vm.guest_addr()) {
            (VmState::Ready, Some(g)) => g,
            (state, _) => {
                vm.counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "chrysalis::host", vm = %vm.config.name, state = state.name(), "connection refused: the VM is not ready");
                drop(client);
                continue;
            }
        };
        let vm = vm.clone();
        tokio::spawn(async move {
            vm.counters.connections.fetch_add(1, Ordering::Relaxed);
            vm.counters.active.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = relay(client, guest, &vm).await {
                tracing::debug!(target: "chrysalis::host", "relay ended: {e}");
            }
            vm.counters.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    counter: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(buf.get(..n).unwrap_or_default()).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Relay one connection. When either side fails, both are closed at once, so a client whose
/// enclave died mid-answer sees its connection end (and its sealed stream without the last
/// chunk) rather than a hang.
pub async fn relay(
    client: TcpStream,
    guest: std::net::SocketAddr,
    vm: &VmHandle,
) -> std::io::Result<()> {
    let upstream = TcpStream::connect(guest).await?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pump(cr, uw, &vm.counters.bytes_in);
    let down = pump(ur, cw, &vm.counters.bytes_out);
    tokio::pin!(up, down);
    // Either direction ending in error ends the connection; a clean half-close waits for the
    // other direction.
    tokio::select! {
        r = &mut up => { r?; down.await }
        r = &mut down => { r?; up.await }
    }
}
