//! The relay's added latency: a request/response round trip over loopback TCP, straight to an
//! echo server and through the host agent's relay. Per request: a new connection each time
//! (what a client's first call pays); per chunk: a 1 KiB message on an open connection.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;

use chrysalis_host::vm::VmHandle;
use criterion::{criterion_group, criterion_main, Criterion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn relay_to(target: SocketAddr) -> SocketAddr {
    let config: chrysalis_host::config::VmConfig = toml::from_str(
        "name = \"b\"\nimage = \"x\"\nplatform = \"none\"\nvcpus = 1\nmemory = \"1G\"\nclient_listen = \"127.0.0.1:0\"\n",
    )
    .expect("config");
    let vm = VmHandle::new(config);
    vm.force_ready(target);
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (_tx, rx) = tokio::sync::watch::channel(false);
    std::mem::forget(_tx);
    tokio::spawn(chrysalis_host::relay::serve(l, Arc::clone(&vm), rx));
    addr
}

async fn round_trip(s: &mut TcpStream, msg: &[u8], buf: &mut [u8]) {
    s.write_all(msg).await.expect("write");
    let mut got = 0;
    while got < msg.len() {
        got += s.read(&mut buf[got..msg.len()]).await.expect("read");
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (direct, relayed) = rt.block_on(async {
        let e = echo_server().await;
        (e, relay_to(e).await)
    });
    let msg = vec![7u8; 1024];
    for (name, addr) in [("direct", direct), ("relayed", relayed)] {
        c.bench_function(
            &format!("request (connect + 1 KiB round trip) {name}"),
            |b| {
                b.to_async(&rt).iter(|| async {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    let mut buf = vec![0u8; 1024];
                    round_trip(&mut s, &msg, &mut buf).await;
                })
            },
        );
        let mut s = rt.block_on(async {
            let s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s
        });
        c.bench_function(
            &format!("chunk (1 KiB round trip, open connection) {name}"),
            |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let mut buf = vec![0u8; 1024];
                        round_trip(&mut s, &msg, &mut buf).await;
                    })
                })
            },
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
