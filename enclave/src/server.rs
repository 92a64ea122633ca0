//! The gRPC service on RA-TLS: `Attest`, `ListModels`, `Generate` (sealed), `Health`.
//!
//! The only place a prompt is decrypted. Nothing of a request body or an answer is logged;
//! errors sent to clients name what was wrong, never what was asked.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use chrysalis_ratls::RaTlsClientVerifier;

use chrysalis_inference::scheduler::EventStream;
use chrysalis_inference::{Event, GenerateRequest, InferenceError, Scheduler};
use chrysalis_proto::enclave_server::{Enclave, EnclaveServer};
use chrysalis_proto::seal::SealError;
use chrysalis_proto::{
    AttestRequest, EvidenceBundle, HealthRequest, HealthResponse, ListModelsRequest,
    ListModelsResponse, ModelInfo, SealedChunk, SealedRequest,
};
use serde::{Deserialize, Serialize};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use crate::identity::{Identity, IdentityError};

/// Plaintext of an answer chunk (inside the seal).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChunkBody {
    /// Generated text.
    Text {
        /// The text.
        text: String,
        /// Token ids it came from.
        tokens: Vec<u32>,
    },
    /// The end, with totals.
    Done {
        /// Totals.
        usage: chrysalis_inference::Usage,
    },
    /// Failure after the answer started: the stream ends here.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// What answers a request: the scheduler (the model) in the enclave. Benchmarks of what
/// surrounds the model (RA-TLS, sealing, the gateway) put a fixed-text source here, so the
/// model's own time does not drown what they measure.
pub trait Answerer: Send + Sync + 'static {
    /// The models served.
    fn models(&self) -> Vec<ModelInfo>;
    /// Validate and start a request; its events arrive on the stream.
    fn submit(&self, req: &GenerateRequest) -> Result<EventStream, InferenceError>;
    /// Requests waiting to start.
    fn queued(&self) -> usize;
}

impl Answerer for Scheduler {
    fn models(&self) -> Vec<ModelInfo> {
        self.engine()
            .models()
            .map(|m| ModelInfo {
                name: m.identity.name.clone(),
                sha256: m.identity.sha256.to_vec(),
                size: m.identity.size,
                architecture: m.identity.architecture.clone(),
                context_length: u32::try_from(m.identity.context_length).unwrap_or(u32::MAX),
            })
            .collect()
    }

    fn submit(&self, req: &GenerateRequest) -> Result<EventStream, InferenceError> {
        Scheduler::submit(self, req)
    }

    fn queued(&self) -> usize {
        Scheduler::queued(self)
    }
}

/// The service state.
#[derive(Debug)]
pub struct EnclaveService<A = Scheduler> {
    identity: Arc<Identity>,
    scheduler: Arc<A>,
    generate_requests: std::sync::atomic::AtomicU64,
}

impl<A: Answerer> EnclaveService<A> {
    /// A service.
    pub fn new(identity: Arc<Identity>, scheduler: Arc<A>) -> Self {
        Self {
            identity,
            scheduler,
            generate_requests: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

fn inference_status(e: &InferenceError) -> Status {
    match e {
        InferenceError::UnknownModel(_) => Status::not_found(e.to_string()),
        InferenceError::BadRequest(_) | InferenceError::ContextTooLong { .. } => {
            Status::invalid_argument(e.to_string())
        }
        InferenceError::Busy(_) => Status::resource_exhausted(e.to_string()),
        InferenceError::ShuttingDown => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn seal_status(e: &SealError) -> Status {
    match e {
        SealError::WrongRecipient => {
            Status::failed_precondition(format!("{e}: attest again and re-seal"))
        }
        SealError::StaleRequest { .. } => Status::failed_precondition(e.to_string()),
        SealError::ReplayedRequest(_) => Status::already_exists(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn identity_status(e: &IdentityError) -> Status {
    match e {
        IdentityError::Nonce(_) => Status::invalid_argument(e.to_string()),
        IdentityError::RateLimited(_) => Status::resource_exhausted(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<SealedChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<A: Answerer> Enclave for EnclaveService<A> {
    async fn attest(
        &self,
        request: Request<AttestRequest>,
    ) -> Result<Response<EvidenceBundle>, Status> {
        let nonce = request.into_inner().nonce;
        let id = Arc::clone(&self.identity);
        let bundle = tokio::task::spawn_blocking(move || id.evidence(&nonce))
            .await
            .map_err(|_| Status::internal("evidence task failed"))?
            .map_err(|e| identity_status(&e))?;
        Ok(Response::new(bundle))
    }

    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let models = self.scheduler.models();
        Ok(Response::new(ListModelsResponse { models }))
    }

    type GenerateStream = ChunkStream;

    async fn generate(
        &self,
        request: Request<SealedRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        self.generate_requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let sealed = request.into_inner();
        let (body, mut sealer) = self
            .identity
            .hpke()
            .open_request(&sealed)
            .map_err(|e| seal_status(&e))?;
        let req: GenerateRequest = serde_json::from_slice(&body)
            // serde's message may quote the input: only its position is passed on.
            .map_err(|e| {
                Status::invalid_argument(format!(
                    "request body is not a valid request (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            })?;
        drop(body);
        let mut events = self
            .scheduler
            .submit(&req)
            .map_err(|e| inference_status(&e))?;
        drop(req);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SealedChunk, Status>>(64);
        tokio::spawn(async move {
            let mut pending_text = String::new();
            let mut pending_tokens = Vec::new();
            while let Some(ev) = events.recv().await {
                let (body, last) = match ev {
                    Ok(Event::Token { id, text }) => {
                        pending_tokens.push(id);
                        pending_text.push_str(&text);
                        // Send text as soon as there is some; token ids ride along.
                        if pending_text.is_empty() {
                            continue;
                        }
                        (
                            ChunkBody::Text {
                                text: std::mem::take(&mut pending_text),
                                tokens: std::mem::take(&mut pending_tokens),
                            },
                            false,
                        )
                    }
                    Ok(Event::Done(usage)) => (ChunkBody::Done { usage }, true),
                    Err(e) => (
                        ChunkBody::Error {
                            message: e.to_string(),
                        },
                        true,
                    ),
                };
                let plain = Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default());
                let item = sealer
                    .seal(&plain, last)
                    .map_err(|e| Status::internal(e.to_string()));
                if tx.send(item).await.is_err() {
                    // The client went away: dropping `events` cancels the sequence.
                    return;
                }
                if last {
                    return;
                }
            }
            // The scheduler ended the stream without a last event: tell the client.
            let _ = tx
                .send(Err(Status::internal("generation ended unexpectedly")))
                .await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn health(&self, _: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            status: if self.identity.is_simulated() {
                "serving (SIMULATED TEE: NOT CONFIDENTIAL)"
            } else {
                "serving"
            }
            .into(),
            platform: self.identity.platform() as i32,
            queued: u32::try_from(self.scheduler.queued()).unwrap_or(u32::MAX),
            version: env!("CARGO_PKG_VERSION").into(),
            generate_requests: self
                .generate_requests
                .load(std::sync::atomic::Ordering::SeqCst),
        }))
    }
}

/// The rustls server configuration of the RA-TLS endpoint (TLS 1.3 only, ALPN h2). With
/// `peers`, clients must present RA-TLS certificates of their own whose evidence verifies
/// (mutual RA-TLS, for enclave-to-enclave links).
pub fn tls_config(
    identity: &Identity,
    peers: Option<Arc<RaTlsClientVerifier>>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    chrysalis_ratls::server_config(identity.own_certificate()?, peers)
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve<A: Answerer>(
    listener: tokio::net::TcpListener,
    identity: Arc<Identity>,
    scheduler: Arc<A>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with_peers(listener, identity, scheduler, None, shutdown).await
}

/// Serve on `listener` until `shutdown` resolves; with `peers`, only to clients that are
/// attested enclaves themselves (mutual RA-TLS).
pub async fn serve_with_peers<A: Answerer>(
    listener: tokio::net::TcpListener,
    identity: Arc<Identity>,
    scheduler: Arc<A>,
    peers: Option<Arc<RaTlsClientVerifier>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&identity, peers.clone())?));
    let (conn_tx, conn_rx) = tokio::sync::mpsc::channel::<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >(16);
    let accept_loop = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                continue;
            };
            // Sealed chunks are small: without this, Nagle and the peer's delayed ACK hold
            // each one back by up to 40 ms.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let conn_tx = conn_tx.clone();
            let peers = peers.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp))
                    .await
                {
                    Ok(Ok(tls)) => {
                        if let Some(peers) = &peers {
                            let attested = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| peers.peer(c));
                            if let Some(a) = attested {
                                tracing::info!(
                                    target: "chrysalis::server",
                                    %peer,
                                    platform = %a.platform(),
                                    hpke_public_key = %hex::encode(a.hpke_public_key),
                                    "attested peer enclave connected"
                                );
                            }
                        }
                        let _ = conn_tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(target: "chrysalis::server", %peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => {
                        tracing::info!(target: "chrysalis::server", %peer, "TLS handshake timed out")
                    }
                }
            });
        }
    });
    let svc = EnclaveService::new(identity, scheduler);
    let result = tonic::transport::Server::builder()
        .add_service(EnclaveServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(conn_rx),
            shutdown,
        )
        .await;
    accept_loop.abort();
    result.map_err(Into::into)
}

/// Bind a listener.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    Ok(tokio::net::TcpListener::bind(addr).await?)
}
