//! Helpers of the end-to-end tests: an in-process enclave (simulated TEE, the real default
//! model, the real gRPC/RA-TLS server), a recording TCP relay, and log capture.
// Test support: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use chrysalis_enclave::gpu::NoGpu;
use chrysalis_enclave::identity::{EnclaveConfig, Identity};
use chrysalis_enclave::server::Answerer;
use chrysalis_enclave::tee::simulated::SimulatedDevice;
use chrysalis_inference::{
    load_default, Engine, LoadOptions, ModelIdentity, Scheduler, SchedulerConfig,
};

/// Everything the process logged (all targets, debug and above), for leak checks.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().map(|b| b.clone()).unwrap_or_default())
        .into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for BufWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber (once per test binary).
pub fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let buf = Arc::clone(log_buffer());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,candle=info,h2=info,hyper=info,tower=info",
            ))
            .with_writer(move || BufWriter(Arc::clone(&buf)))
            .try_init();
    });
}

/// A running enclave.
#[derive(Debug, Clone, Copy)]
pub struct TestEnclave {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl TestEnclave {
    /// Its URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// How many Generate calls it has received (its Health counter), asked over a verified
    /// connection.
    pub async fn generate_requests(&self) -> u64 {
        let policy = chrysalis_attestation::Policy::baseline().allow_simulated();
        let mut c = chrysalis_client::remote::connect(
            &self.url(),
            &policy,
            chrysalis_client::inputs::now(),
        )
        .await
        .expect("connect");
        c.client
            .health(chrysalis_proto::HealthRequest {})
            .await
            .expect("health")
            .into_inner()
            .generate_requests
    }
}

/// Start an enclave with the simulated TEE and the default model on 127.0.0.1:0. `None` when
/// the model is not installed (and `CHRYSALIS_REQUIRE_FIXTURES` is unset).
pub fn start_enclave(max_active: usize, max_queued: usize) -> Option<TestEnclave> {
    capture_logs();
    let model = match load_default(&LoadOptions::default()) {
        Ok(m) => m,
        Err(e) if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() => {
            panic!("default model: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            return None;
        }
    };
    let engine = Engine::single(model);
    let models = engine.models().map(|m| m.identity.clone()).collect();
    let scheduler = Arc::new(Scheduler::start(
        Arc::new(engine),
        SchedulerConfig {
            max_active,
            max_queued,
        },
    ));
    Some(serve_simulated(scheduler, models, max_active, max_queued))
}

/// Serve `answerer` as an enclave with the simulated TEE (real keys, evidence, RA-TLS and
/// sealing) on 127.0.0.1:0, on its own two-thread runtime. `models` go into the measured
/// configuration.
pub fn serve_simulated<A: Answerer>(
    answerer: Arc<A>,
    models: Vec<ModelIdentity>,
    max_active: usize,
    max_queued: usize,
) -> TestEnclave {
    let config = EnclaveConfig::new("simulated", models, max_active, max_queued, None);
    let identity = Arc::new(
        Identity::new(
            Box::new(SimulatedDevice::new()),
            Box::new(NoGpu),
            &config,
            50.0,
        )
        .expect("identity"),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let _ = tx.send(listener.local_addr().expect("addr"));
            let _ = chrysalis_enclave::server::serve(
                listener,
                identity,
                answerer,
                std::future::pending(),
            )
            .await;
        });
    });
    TestEnclave {
        addr: rx.recv().expect("enclave started"),
    }
}

/// The enclave shared by the tests of one binary.
pub fn shared_enclave() -> Option<TestEnclave> {
    static E: OnceLock<Option<TestEnclave>> = OnceLock::new();
    *E.get_or_init(|| start_enclave(4, 8))
}

/// A plain TCP relay (as an untrusted host would run) that records every byte both ways.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Everything it carried.
    pub recording: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    /// The relay's URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A copy of the recording.
    pub fn recorded(&self) -> Vec<u8> {
        self.recording.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Start a relay to `target` on its own thread.
pub fn start_relay(target: SocketAddr) -> Relay {
    let recording = Arc::new(Mutex::new(Vec::new()));
    let rec = Arc::clone(&recording);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let _ = tx.send(listener.local_addr().expect("addr"));
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let rec = Arc::clone(&rec);
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let a = pump(cr, sw, Arc::clone(&rec));
                    let b = pump(sr, cw, rec);
                    let _ = tokio::join!(a, b);
                });
            }
        });
    });
    Relay {
        addr: rx.recv().expect("relay started"),
        recording,
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rec: Arc<Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                let data = buf.get(..n).unwrap_or_default();
                if let Ok(mut r) = rec.lock() {
                    r.extend_from_slice(data);
                }
                if to.write_all(data).await.is_err() {
                    return;
                }
            }
        }
    }
}
