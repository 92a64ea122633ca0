//! The host API: `GET /v1/attestation` (the enclave's evidence bundle, relayed for clients to
//! verify themselves; the host is not trusted for it), `GET /healthz` (200 only when every VM
//! is ready), `GET /metrics` (Prometheus text).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::vm::{VmHandle, VmState};

/// Shared API state.
#[derive(Debug, Clone)]
pub struct Api {
    /// The VMs.
    pub vms: Arc<Vec<Arc<VmHandle>>>,
    /// Where the endorsements an enclave's bundle lacks come from (`None`: served as is).
    pub collateral: Option<chrysalis_client::collateral::CollateralStore>,
    /// Clock for collateral expiry (tests pin it); `None` reads the wall clock.
    pub now: Option<chrysalis_attestation::Timestamp>,
}

/// The router.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/attestation", get(attestation))
        .with_state(api)
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{v:#}\n"),
    )
        .into_response()
}

async fn healthz(State(api): State<Api>) -> Response {
    let vms: Vec<serde_json::Value> = api
        .vms
        .iter()
        .map(|v| {
            serde_json::json!({
                "name": v.config.name,
                "state": v.state().name(),
                "last_error": v.last_error.lock().ok().and_then(|e| e.clone()),
            })
        })
        .collect();
    let ready = api.vms.iter().all(|v| v.state() == VmState::Ready);
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        serde_json::json!({"ready": ready, "vms": vms}),
    )
}

#[derive(Debug, serde::Deserialize)]
struct AttestationQuery {
    vm: Option<String>,
    nonce: Option<String>,
}

fn bundle_json(b: &chrysalis_proto::EvidenceBundle) -> serde_json::Value {
    use prost::Message;
    let platform = chrysalis_proto::Platform::try_from(b.platform)
        .map(|p| p.as_str_name().to_string())
        .unwrap_or_else(|_| b.platform.to_string());
    serde_json::json!({
        "platform": platform,
        "evidence": hex::encode(&b.evidence),
        "hpke_public_key": hex::encode(&b.hpke_public_key),
        "tls_spki_sha256": hex::encode(&b.tls_spki_sha256),
        "nonce": hex::encode(&b.nonce),
        "binding_version": b.binding_version,
        "tdx_collateral": !b.tdx_collateral_json.is_empty(),
        "vcek": !b.vcek_der.is_empty(),
        "config_json": String::from_utf8_lossy(&b.config_json),
        "bundle_protobuf": hex::encode(b.encode_to_vec()),
        "note": "relayed by the untrusted host agent: verify it yourself (`chrysalis attest` does)",
    })
}

async fn attestation(State(api): State<Api>, Query(q): Query<AttestationQuery>) -> Response {
    let vm = match (&q.vm, api.vms.len()) {
        (Some(name), _) => api.vms.iter().find(|v| &v.config.name == name),
        (None, 1) => api.vms.first(),
        (None, _) => {
            return json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "several VMs: name one with ?vm=NAME"}),
            )
        }
    };
    let Some(vm) = vm else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "no such VM"}),
        );
    };
    let bundle = match &q.nonce {
        // A nonce: ask the enclave for fresh evidence (it rate-limits these itself).
        Some(n) => {
            let nonce = match hex::decode(n) {
                Ok(v) if (16..=64).contains(&v.len()) => v,
                _ => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        serde_json::json!({"error": "nonce: 16 to 64 bytes, hex"}),
                    )
                }
            };
            let Some(addr) = vm.guest_addr().filter(|_| vm.state() == VmState::Ready) else {
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": "the VM is not ready", "state": vm.state().name()}),
                );
            };
            let fresh = async {
                let mut c = chrysalis_client::remote::connect_unverified(addr)
                    .await
                    .map_err(|e| e.to_string())?;
                c.attest(chrysalis_proto::AttestRequest { nonce })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string())
            };
            match fresh.await {
                Ok(b) => b,
                Err(e) => return json(StatusCode::BAD_GATEWAY, serde_json::json!({"error": e})),
            }
        }
        None => match vm.bundle.lock().ok().and_then(|b| b.clone()) {
            Some(b) => b,
            None => {
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": "no evidence yet", "state": vm.state().name()}),
                )
            }
        },
    };
    // What the evidence needs and the bundle lacks is added from the store; Intel collateral
    // that expires soon (or has) is completed anew, the store fetching a newer one ahead of
    // expiry. If that fails the bundle goes out as it was, with the reason.
    let due = collateral_due(&api, &bundle);
    let (bundle, collateral_error, completed) =
        if due || chrysalis_client::collateral::bundle_lacks_endorsements(&bundle) {
            let mut input = bundle.clone();
            if due {
                input.tdx_collateral_json.clear();
            }
            match complete(&api, input).await {
                Some(Ok(b)) => (b, None, true),
                Some(Err(e)) => (bundle, Some(e), false),
                None => (bundle, None, false),
            }
        } else {
            (bundle, None, false)
        };
    if completed && q.nonce.is_none() {
        // Keep the completed bundle, so the next request does not read the cache again.
        if let Ok(mut b) = vm.bundle.lock() {
            if b.as_ref().map(|b| &b.evidence) == Some(&bundle.evidence) {
                *b = Some(bundle.clone());
            }
        }
    }
    vm.counters
        .attestation_fetches
        .fetch_add(1, Ordering::Relaxed);
    let mut v = bundle_json(&bundle);
    if let (Some(e), Some(o)) = (collateral_error, v.as_object_mut()) {
        // Said, never hidden: the client then needs collateral from elsewhere.
        o.insert("collateral_error".into(), serde_json::json!(e));
    }
    json(StatusCode::OK, v)
}

/// Whether the Intel collateral in a bundle is within the store's refresh-ahead window of its
/// `nextUpdate`, or past it.
fn collateral_due(api: &Api, bundle: &chrysalis_proto::EvidenceBundle) -> bool {
    let Some(store) = &api.collateral else {
        return false;
    };
    if bundle.platform != chrysalis_proto::Platform::Tdx as i32
        || bundle.tdx_collateral_json.is_empty()
    {
        return false;
    }
    let Ok(c) = chrysalis_attestation::tdx::parse_collateral(&bundle.tdx_collateral_json) else {
        return false;
    };
    let Ok(dates) = chrysalis_attestation::tdx::collateral_dates(&c) else {
        return false;
    };
    let now = api.now.unwrap_or_else(chrysalis_client::inputs::now);
    now.secs().saturating_add(store.refresh_ahead().as_secs()) >= dates.next_update.secs()
}

/// Add the endorsements the bundle lacks from the host's collateral cache (fetching them on a
/// miss). None without a store.
async fn complete(
    api: &Api,
    mut bundle: chrysalis_proto::EvidenceBundle,
) -> Option<Result<chrysalis_proto::EvidenceBundle, String>> {
    let store = api.collateral.clone()?;
    let now = api.now.unwrap_or_else(chrysalis_client::inputs::now);
    let done = tokio::task::spawn_blocking(move || {
        chrysalis_client::collateral::complete_bundle(&mut bundle, &store, now).map(|_| bundle)
    })
    .await;
    Some(match done {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            tracing::warn!(target: "chrysalis::host", error = %e, "no collateral for the evidence");
            Err(e.to_string())
        }
        Err(e) => Err(e.to_string()),
    })
}

/// Prometheus text exposition of every VM's state and counters.
/// A metric: name, help text, and how to read it from a VM's counters.
type Counter = (&'static str, &'static str, fn(&crate::vm::Counters) -> u64);

pub fn render_metrics(vms: &[Arc<VmHandle>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP chrysalis_vm_state 1 for the state each VM is in.\n# TYPE chrysalis_vm_state gauge"
    );
    for v in vms {
        let now = v.state();
        for s in VmState::ALL {
            let _ = writeln!(
                out,
                "chrysalis_vm_state{{vm=\"{}\",state=\"{}\"}} {}",
                v.config.name,
                s.name(),
                u8::from(now == s)
            );
        }
    }
    let counters: [Counter; 6] = [
        ("chrysalis_vm_restarts_total", "VM relaunches.", |c| {
            c.restarts.load(Ordering::Relaxed)
        }),
        (
            "chrysalis_relay_connections_total",
            "Client connections relayed.",
            |c| c.connections.load(Ordering::Relaxed),
        ),
        (
            "chrysalis_relay_refused_total",
            "Client connections refused (VM not ready).",
            |c| c.refused.load(Ordering::Relaxed),
        ),
        (
            "chrysalis_relay_bytes_in_total",
            "Bytes from clients to enclaves.",
            |c| c.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "chrysalis_relay_bytes_out_total",
            "Bytes from enclaves to clients.",
            |c| c.bytes_out.load(Ordering::Relaxed),
        ),
        (
            "chrysalis_attestation_fetches_total",
            "Evidence bundles served.",
            |c| c.attestation_fetches.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for v in vms {
            let _ = writeln!(
                out,
                "{name}{{vm=\"{}\"}} {}",
                v.config.name,
                get(&v.counters)
            );
        }
    }
    let _ = writeln!(out, "# HELP chrysalis_relay_active_connections Open client connections.\n# TYPE chrysalis_relay_active_connections gauge");
    for v in vms {
        let _ = writeln!(
            out,
            "chrysalis_relay_active_connections{{vm=\"{}\"}} {}",
            v.config.name,
            v.counters.active.load(Ordering::Relaxed)
        );
    }
    out
}

async fn metrics(State(api): State<Api>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_metrics(&api.vms),
    )
        .into_response()
}
