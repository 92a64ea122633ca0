//! The scheduler with the real default model: fairness, back-pressure, cancellation.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrysalis_inference::{
    load_default, Engine, Event, GenerateRequest, InferenceError, Message, SamplingParams,
    Scheduler, SchedulerConfig,
};

fn engine() -> Option<Arc<Engine>> {
    match load_default(&Default::default()) {
        Ok(m) => Some(Arc::new(Engine::single(m))),
        Err(e) if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() => {
            panic!("default model: {e}")
        }
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

fn req(max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        model: String::new(),
        messages: vec![Message::new("user", "Tell me a long story about the sea.")],
        params: SamplingParams {
            temperature: 0.8,
            seed: 1,
            max_tokens,
            ..SamplingParams::default()
        },
    }
}

#[test]
fn a_full_queue_is_busy_at_once_and_streams_are_interleaved() {
    let Some(engine) = engine() else { return };
    let sched = Scheduler::start(
        engine,
        SchedulerConfig {
            max_active: 2,
            max_queued: 1,
        },
    );
    // Wait until the loop has taken each request, so the one-slot queue is empty again.
    let settle = |s: &Scheduler| {
        let start = Instant::now();
        while s.queued() > 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let mut a = sched.submit(&req(12)).expect("a");
    settle(&sched);
    let mut b = sched.submit(&req(12)).expect("b");
    settle(&sched);
    let _c = sched.submit(&req(4)).expect("one may wait");
    let t = Instant::now();
    let err = sched.submit(&req(4)).expect_err("queue full");
    assert!(matches!(err, InferenceError::Busy(1)), "{err}");
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "busy is immediate, not a hang"
    );

    // Fairness: both active streams have produced tokens before either finished.
    let first_a = a.blocking_recv().expect("event").expect("ok");
    let first_b = b.blocking_recv().expect("event").expect("ok");
    assert!(matches!(first_a, Event::Token { .. }) && matches!(first_b, Event::Token { .. }));
    let drain = |rx: &mut chrysalis_inference::scheduler::EventStream| {
        let mut n = 1;
        while let Some(ev) = rx.blocking_recv() {
            match ev.expect("ok") {
                Event::Token { .. } => n += 1,
                Event::Done(u) => return (n, u.completion_tokens),
            }
        }
        panic!("stream ended without Done");
    };
    assert_eq!(drain(&mut a).1, 12);
    assert_eq!(drain(&mut b).1, 12);
}

#[test]
fn a_client_that_goes_away_is_cancelled() {
    let Some(engine) = engine() else { return };
    let sched = Scheduler::start(
        engine,
        SchedulerConfig {
            max_active: 1,
            max_queued: 4,
        },
    );
    let long = sched.submit(&req(400)).expect("long");
    drop(long);
    // The slot frees: a short request completes well before 400 tokens could have been made.
    let t = Instant::now();
    let mut short = sched.submit(&req(3)).expect("short");
    let mut done = false;
    while let Some(ev) = short.blocking_recv() {
        if let Event::Done(u) = ev.expect("ok") {
            assert_eq!(u.completion_tokens, 3);
            done = true;
            break;
        }
    }
    assert!(done);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "the cancelled sequence did not keep the slot"
    );
}

#[test]
fn bad_requests_fail_at_submit() {
    let Some(engine) = engine() else { return };
    let sched = Scheduler::start(engine, SchedulerConfig::default());
    let mut r = req(4);
    r.model = "missing".into();
    assert!(matches!(
        sched.submit(&r),
        Err(InferenceError::UnknownModel(_))
    ));
    let mut r = req(4);
    r.params.top_p = 2.0;
    assert!(matches!(
        sched.submit(&r),
        Err(InferenceError::BadRequest(_))
    ));
    let mut r = req(4);
    r.messages.clear();
    assert!(matches!(
        sched.submit(&r),
        Err(InferenceError::BadRequest(_))
    ));
}

/// Greedy completions of several different prompts, decoded as one batch (and the longest
/// prompt prefilled in chunks beside the others' decoding), equal each prompt decoded alone.
#[test]
fn batched_decoding_equals_decoding_alone() {
    let Some(engine) = engine() else { return };
    let model = engine.model("").expect("default model");
    let long: String = "Tell me about lighthouses, ships and the sea. ".repeat(40);
    let prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        &long,
    ];
    let make = |p: &str| {
        chrysalis_inference::Sequence::new(
            Arc::clone(&model),
            &GenerateRequest {
                model: String::new(),
                messages: vec![Message::new("user", p)],
                params: SamplingParams::greedy(24),
            },
        )
        .expect("sequence")
    };
    assert!(make(&long).prompt_tokens().len() > chrysalis_inference::engine::PREFILL_CHUNK);
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut s = make(p);
            while !s.is_done() {
                s.step().expect("step");
            }
            s.generated().to_vec()
        })
        .collect();
    let mut seqs: Vec<_> = prompts.iter().map(|p| make(p)).collect();
    let mut steps = 0;
    while seqs.iter().any(|s| !s.is_done()) {
        let mut refs: Vec<&mut chrysalis_inference::Sequence> = seqs.iter_mut().collect();
        for r in chrysalis_inference::step_many(&mut refs) {
            r.expect("batched step");
        }
        steps += 1;
    }
    for (i, (s, want)) in seqs.iter().zip(&alone).enumerate() {
        assert_eq!(s.generated(), want.as_slice(), "prompt {i}");
    }
    // The long prompt took several prefill steps, while the others were decoding.
    assert!(steps > alone[0].len(), "{steps} steps");
}
