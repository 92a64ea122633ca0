//! Cost of the sealed protocol: per request (seal by the client + open by the enclave) and per
//! answer chunk (seal by the enclave + open by the client). Goals: < 50 µs per request,
//! < 5 µs per chunk.
//!
//! A request is measured three ways: alone (a new sealing session: one HPKE encapsulation by the
//! client, one decapsulation by the enclave); as the first request of a session the client set up
//! beforehand (the SDK does so when it connects), so only the decapsulation is timed; and as a
//! later request of a session whose context both sides already hold (what the gateway and a
//! conversation send after their first).
use chrysalis_proto::seal::{seal_request, HpkeKeyPair, SealingSession};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

fn bench(c: &mut Criterion) {
    let kp = HpkeKeyPair::generate();
    let body = br#"{"model":"","messages":[{"role":"user","content":"What is the capital of France? Answer in one word."}],"params":{"temperature":0.0,"max_tokens":64}}"#;
    c.bench_function("request_seal_and_open", |b| {
        b.iter(|| {
            let (req, _client) = seal_request(kp.public_key(), body).expect("seal");
            kp.open_request(&req).expect("open")
        })
    });
    // What a connection's first request costs once the client has set up its session at
    // connect time (as the SDK does): the encapsulation is outside the timing.
    c.bench_function("request_seal_and_open_first_in_session", |b| {
        b.iter_batched(
            || SealingSession::new(kp.public_key()).expect("session"),
            |session| {
                let (req, _client) = session.seal(body).expect("seal");
                kp.open_request(&req).expect("open")
            },
            BatchSize::SmallInput,
        )
    });
    let session = SealingSession::new(kp.public_key()).expect("session");
    let (first, _) = session.seal(body).expect("seal");
    kp.open_request(&first).expect("open");
    c.bench_function("request_seal_and_open_in_session", |b| {
        b.iter(|| {
            let (req, _client) = session.seal(body).expect("seal");
            kp.open_request(&req).expect("open")
        })
    });
    let (req, mut client) = seal_request(kp.public_key(), body).expect("seal");
    let (_, mut server) = kp.open_request(&req).expect("open");
    let piece = br#"{"type":"text","text":" Paris","tokens":[7042]}"#;
    c.bench_function("chunk_seal_and_open", |b| {
        b.iter(|| {
            let chunk = server.seal(piece, false).expect("seal");
            client.open(&chunk).expect("open")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
