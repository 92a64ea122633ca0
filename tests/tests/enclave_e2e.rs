//! End to end, without a VM: an enclave with the simulated TEE and the real default model
//! serves gRPC on RA-TLS; the client attests, seals, and streams back a verified answer.

use chrysalis_attestation::Policy;
use chrysalis_client::inputs::now;
use chrysalis_client::remote::{self, AnswerPiece, RemoteError};
use chrysalis_proto::seal::{seal_request, SealError};
use chrysalis_proto::HealthRequest;
use chrysalis_tests::{captured_logs, shared_enclave, start_enclave, start_relay};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn sim_policy() -> Policy {
    Policy::baseline().allow_simulated()
}

fn body(prompt: &str, max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "model": "",
        "messages": [{"role": "user", "content": prompt}],
        "params": {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 0, "max_tokens": max_tokens, "stop": []}
    })
}

#[test]
fn attest_seal_and_stream_a_verified_answer() {
    let Some(e) = shared_enclave() else { return };
    rt().block_on(async {
        let mut conn = remote::connect(&e.url(), &sim_policy(), now())
            .await
            .expect("attested");
        assert_eq!(
            conn.attestation.platform(),
            chrysalis_attestation::Platform::Simulated
        );
        let models = conn
            .attestation
            .config
            .get("models")
            .and_then(|m| m.as_array())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            models
                .first()
                .and_then(|m| m.get("sha256"))
                .and_then(|v| v.as_str()),
            Some(chrysalis_inference::DEFAULT_MODEL_SHA256),
            "the measured configuration names the model file's digest"
        );
        let fresh = remote::attest_fresh(&mut conn, &sim_policy(), now())
            .await
            .expect("fresh evidence");
        assert_eq!(fresh.hpke_public_key, conn.attestation.hpke_public_key);

        let mut text = String::new();
        let usage = remote::generate(
            &mut conn,
            &body("What is the capital of France?", 12),
            |p| {
                if let AnswerPiece::Text(t) = p {
                    text.push_str(t);
                }
            },
        )
        .await
        .expect("verified answer");
        assert_eq!(
            usage.get("completion_tokens").and_then(|v| v.as_u64()),
            Some(12)
        );

        // The same greedy request run directly on the engine gives the same text.
        let model = chrysalis_inference::load_default(&Default::default()).expect("model");
        let engine = chrysalis_inference::Engine::single(model);
        let direct = engine
            .generate_blocking(
                &serde_json::from_value(body("What is the capital of France?", 12)).expect("req"),
                |_| {},
            )
            .expect("direct");
        assert_eq!(text, direct.text);
        assert!(!text.is_empty());
    });
}

#[test]
fn the_host_cannot_read_prompts_or_answers() {
    let Some(e) = shared_enclave() else { return };
    let relay = start_relay(e.addr);
    let canary = "CANARY-7f3a9c1e-do-not-leak";
    let answer = rt().block_on(async {
        let mut conn = remote::connect(&relay.url(), &sim_policy(), now())
            .await
            .expect("attested via relay");
        let mut text = String::new();
        remote::generate(
            &mut conn,
            &body(&format!("Repeat after me: {canary}"), 24),
            |p| {
                if let AnswerPiece::Text(t) = p {
                    text.push_str(t);
                }
            },
        )
        .await
        .expect("answer via relay");
        text
    });
    let recorded = relay.recorded();
    assert!(
        recorded.len() > 1000,
        "the relay carried the traffic ({} bytes)",
        recorded.len()
    );
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !find(&recorded, canary.as_bytes()),
        "the canary crossed the relay in the clear"
    );
    assert!(
        !find(&recorded, b"CANARY"),
        "part of the canary crossed the relay in the clear"
    );
    let answer_words: Vec<&str> = answer.split_whitespace().filter(|w| w.len() >= 6).collect();
    for w in &answer_words {
        assert!(
            !find(&recorded, w.as_bytes()),
            "answer text {w:?} crossed the relay in the clear"
        );
    }
    let logs = captured_logs();
    assert!(!logs.is_empty(), "logs were captured");
    assert!(!logs.contains("CANARY"), "the canary reached a log");
}

#[test]
fn a_policy_without_simulated_rejects_and_the_enclave_receives_nothing() {
    // A dedicated enclave, so the request counter is ours alone.
    let Some(e) = start_enclave(1, 1) else { return };
    rt().block_on(async {
        let err = remote::connect(&e.url(), &Policy::baseline(), now())
            .await
            .expect_err("rejected");
        match &err {
            RemoteError::Rejected(reason) => {
                assert!(reason.to_lowercase().contains("simulat"), "{reason}")
            }
            other => panic!("expected a rejection, got {other}"),
        }
        // Nothing was sent; the enclave saw no Generate call.
        let mut conn = remote::connect(&e.url(), &sim_policy(), now())
            .await
            .expect("attested");
        let h = conn
            .client
            .health(HealthRequest {})
            .await
            .expect("health")
            .into_inner();
        assert_eq!(h.generate_requests, 0);
        assert!(h.status.contains("NOT CONFIDENTIAL"));
    });
}

#[test]
fn a_wrong_measurement_is_rejected() {
    let Some(e) = shared_enclave() else { return };
    let policy = Policy::from_toml(&format!(
        "version = 1\nplatforms = [\"simulated\"]\n[simulated]\nmeasurement = [\"{}\"]\n",
        "00".repeat(48)
    ))
    .expect("policy");
    rt().block_on(async {
        let err = remote::connect(&e.url(), &policy, now())
            .await
            .expect_err("rejected");
        assert!(matches!(err, RemoteError::Rejected(_)), "{err}");
    });
}

#[test]
fn tampered_replayed_dropped_and_misdirected_chunks_are_detected() {
    let Some(e) = shared_enclave() else { return };
    rt().block_on(async {
        let mut conn = remote::connect(&e.url(), &sim_policy(), now())
            .await
            .expect("attested");
        let body = serde_json::to_vec(&body("Count to five.", 6)).expect("json");
        let collect = |mut conn: remote::Attested, body: Vec<u8>, pk: [u8; 32]| async move {
            let (sealed, opener) = seal_request(&pk, &body).expect("seal");
            let mut stream = conn
                .client
                .generate(sealed)
                .await
                .expect("generate")
                .into_inner();
            let mut chunks = Vec::new();
            while let Some(c) = stream.message().await.expect("chunk") {
                chunks.push(c);
            }
            (chunks, opener, conn)
        };
        let pk = conn.attestation.hpke_public_key;
        let (chunks, mut opener, c2) = collect(conn, body.clone(), pk).await;
        conn = c2;
        assert!(chunks.len() >= 2 && chunks.last().is_some_and(|c| c.last));
        // Untouched, they open.
        for c in &chunks {
            opener.open(c).expect("genuine chunk opens");
        }
        opener.finish().expect("complete");

        // Tampered.
        let (chunks, mut opener, c2) = collect(conn, body.clone(), pk).await;
        conn = c2;
        let mut bad = chunks.first().cloned().expect("chunk");
        if let Some(b) = bad.ciphertext.get_mut(3) {
            *b ^= 0x40;
        }
        assert!(matches!(
            opener.open(&bad),
            Err(SealError::Authentication(_))
        ));

        // Replayed and reordered.
        let (chunks, mut opener, c2) = collect(conn, body.clone(), pk).await;
        conn = c2;
        let first = chunks.first().expect("chunk");
        opener.open(first).expect("first");
        assert!(matches!(
            opener.open(first),
            Err(SealError::OutOfOrder { .. })
        ));
        if let Some(third) = chunks.get(2) {
            assert!(matches!(
                opener.open(third),
                Err(SealError::OutOfOrder { .. })
            ));
        }

        // The last chunk dropped: truncation.
        let (chunks, mut opener, c2) = collect(conn, body.clone(), pk).await;
        conn = c2;
        for c in chunks.iter().filter(|c| !c.last) {
            opener.open(c).expect("chunk");
        }
        assert_eq!(opener.finish(), Err(SealError::Truncated));

        // Chunks of one request do not open under another request's keys.
        let (chunks, _, c2) = collect(conn, body.clone(), pk).await;
        conn = c2;
        let (_, mut other) = seal_request(&pk, &body).expect("seal");
        assert!(matches!(
            other.open(chunks.first().expect("chunk")),
            Err(SealError::Authentication(_))
        ));

        // A request sealed to a wrong key is refused by the enclave.
        let wrong = chrysalis_proto::seal::HpkeKeyPair::generate();
        let (sealed, _) = seal_request(wrong.public_key(), &body).expect("seal");
        let status = conn
            .client
            .generate(sealed)
            .await
            .expect_err("wrong key refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);

        // Requests of one connection share its sealing session, each under keys of its own...
        let before = conn.sealing.requests_sealed();
        for _ in 0..2 {
            remote::generate(
                &mut conn,
                &serde_json::from_slice(&body).expect("json"),
                |_| {},
            )
            .await
            .expect("a later request of the session is answered");
        }
        assert_eq!(conn.sealing.requests_sealed(), before + 2);
        // ...and a request sent again is refused as a replay, without an answer.
        let (sealed, _) = conn.sealing.seal(&body).expect("seal");
        let mut stream = conn
            .client
            .generate(sealed.clone())
            .await
            .expect("generate")
            .into_inner();
        while stream.message().await.expect("chunk").is_some() {}
        let status = conn
            .client
            .generate(sealed)
            .await
            .expect_err("replay refused");
        assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
        assert!(
            status.message().contains("replayed"),
            "{}",
            status.message()
        );
    });
}

#[test]
fn busy_and_bad_requests_are_clear_errors_not_answers() {
    let Some(e) = shared_enclave() else { return };
    rt().block_on(async {
        let mut conn = remote::connect(&e.url(), &sim_policy(), now())
            .await
            .expect("attested");
        let mut b = body("hi", 4);
        b["model"] = serde_json::json!("no-such-model");
        let err = remote::generate(&mut conn, &b, |_| {})
            .await
            .expect_err("unknown model");
        assert!(err.to_string().contains("unknown model"), "{err}");
        let mut b = body("hi", 4);
        b["params"]["temperature"] = serde_json::json!(-2.0);
        let err = remote::generate(&mut conn, &b, |_| {})
            .await
            .expect_err("bad params");
        assert!(err.to_string().contains("temperature"), "{err}");
    });
}

#[test]
fn a_written_policy_pins_exactly_what_was_verified() {
    let Some(e) = shared_enclave() else { return };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut conn = remote::connect(&e.url(), &sim_policy(), now())
            .await
            .expect("attested");
        let att = remote::attest_fresh(&mut conn, &sim_policy(), now())
            .await
            .expect("fresh");
        let text = chrysalis_client::report::pinned_policy(&att.verified, &e.url());
        assert!(text.contains("NOT CONFIDENTIAL"), "{text}");
        let pinned = Policy::from_toml(&text).expect("the written policy parses");
        remote::connect(&e.url(), &pinned, now())
            .await
            .expect("the same enclave passes its pinned policy");
        // One changed hex digit of the measurement: refused.
        let m = hex::encode(match att.verified.measurements() {
            chrysalis_attestation::Measurements::Simulated(m) => m.measurement,
            other => panic!("not simulated: {other:?}"),
        });
        let mut changed = m.clone().into_bytes();
        changed[0] = if changed[0] == b'0' { b'1' } else { b'0' };
        let other =
            Policy::from_toml(&text.replace(&m, std::str::from_utf8(&changed).unwrap_or("")))
                .expect("parse");
        assert!(remote::connect(&e.url(), &other, now()).await.is_err());
    });
}

fn chat_settings(url: String, policy: Policy) -> chrysalis_client::chat::ChatSettings {
    chrysalis_client::chat::ChatSettings {
        url,
        policy,
        model: String::new(),
        temperature: 0.0,
        max_tokens: 6,
        system: Some("Be brief.".into()),
        collateral: Default::default(),
    }
}

#[test]
fn a_conversation_verifies_first_keeps_its_turns_and_obeys_its_commands() {
    use chrysalis_client::chat::{converse, Display, Outcome};
    let Some(e) = start_enclave(1, 2) else { return };
    rt().block_on(async {
        let input =
            "Say hello.\n/attest\n/reset\n\n   \nName a colour.\n/exit\nThis line is never sent.\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let outcome = converse(
            &chat_settings(e.url(), sim_policy()),
            input.as_bytes(),
            &mut out,
            &mut err,
            Display::default(),
        )
        .await
        .expect("conversation");
        let (out, err) = (String::from_utf8_lossy(&out), String::from_utf8_lossy(&err));
        assert_eq!(
            outcome,
            Outcome {
                answered: 2,
                failed: 0,
                rejected: None
            },
            "{err}"
        );
        // Two answers, one per line, each with text.
        let answers: Vec<&str> = out.lines().collect();
        assert_eq!(answers.len(), 2, "{out:?}");
        assert!(answers.iter().all(|a| !a.trim().is_empty()), "{out:?}");
        // Verified before the first turn, shown again on /attest, loud about the simulator.
        assert_eq!(err.matches("ACCEPTED").count(), 2, "{err}");
        assert!(err.contains("SIMULATED TEE"), "{err}");
        assert!(err.contains("(conversation cleared)"), "{err}");
        // Blank lines and commands are not turns; nothing after /exit is sent.
        assert_eq!(e.generate_requests().await, 2);
    });
}

#[test]
fn a_conversation_with_a_failing_policy_sends_nothing() {
    use chrysalis_client::chat::{converse, Display};
    let Some(e) = start_enclave(1, 1) else { return };
    rt().block_on(async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let outcome = converse(
            &chat_settings(e.url(), Policy::baseline()),
            "A secret question.\nAnother.\n".as_bytes(),
            &mut out,
            &mut err,
            Display::default(),
        )
        .await
        .expect("conversation");
        let err = String::from_utf8_lossy(&err);
        assert_eq!(outcome.answered, 0);
        let reason = outcome.rejected.expect("rejected");
        assert!(reason.to_lowercase().contains("simulat"), "{reason}");
        assert!(
            err.contains("REJECTED") && err.contains("nothing was sent"),
            "{err}"
        );
        assert!(out.is_empty());
        assert_eq!(e.generate_requests().await, 0);
    });
}
