//! Serving many users: a bounded queue in front of one decode loop that advances every active
//! sequence by one step per iteration (a token, or a chunk of its prompt), so every stream
//! progresses and a long answer does not starve a short one. Sequences on the same native model
//! are decoded as one batch: the weights are read once per step for all of them. A full queue is an immediate [`InferenceError::Busy`], never a hang;
//! a client that goes away (its receiver dropped) has its sequence cancelled at the next step.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc as tmpsc;

use crate::engine::{step_many, Engine, Event, GenerateRequest, Sequence};
use crate::error::InferenceError;

/// Limits of a scheduler.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Sequences decoded concurrently.
    pub max_active: usize,
    /// Requests waiting beyond those; one more is refused as busy.
    pub max_queued: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_active: 8,
            max_queued: 32,
        }
    }
}

/// The events of one request, as the scheduler sends them.
pub type EventStream = tmpsc::UnboundedReceiver<Result<Event, InferenceError>>;

struct Job {
    seq: Sequence,
    tx: tmpsc::UnboundedSender<Result<Event, InferenceError>>,
}

/// Handle to the decode loop. Dropping it stops the loop after the active work.
#[derive(Debug)]
pub struct Scheduler {
    engine: Arc<Engine>,
    tx: Option<SyncSender<Job>>,
    queued: Arc<AtomicUsize>,
    config: SchedulerConfig,
    worker: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Start the decode loop.
    pub fn start(engine: Arc<Engine>, config: SchedulerConfig) -> Self {
        let config = SchedulerConfig {
            max_active: config.max_active.max(1),
            max_queued: config.max_queued,
        };
        // The channel itself holds the queue; `queued` counts what it holds for the busy check.
        let (tx, rx) = mpsc::sync_channel::<Job>(config.max_queued.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let q = Arc::clone(&queued);
        let worker = std::thread::Builder::new()
            .name("chrysalis-decode".into())
            .spawn(move || decode_loop(&rx, &q, config.max_active))
            .ok();
        Self {
            engine,
            tx: Some(tx),
            queued,
            config,
            worker,
        }
    }

    /// The engine behind it.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Requests waiting to start.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Validate and enqueue a request. Errors in the request (unknown model, bad parameters,
    /// context too long) and a full queue are returned here, before anything runs.
    pub fn submit(&self, req: &GenerateRequest) -> Result<EventStream, InferenceError> {
        let model = self.engine.model(&req.model)?;
        let seq = Sequence::new(model, req)?;
        let tx = self.tx.as_ref().ok_or(InferenceError::ShuttingDown)?;
        if self.worker.is_none() {
            return Err(InferenceError::ShuttingDown);
        }
        let (etx, erx) = tmpsc::unbounded_channel();
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.config.max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(InferenceError::Busy(self.config.max_queued));
        }
        match tx.try_send(Job { seq, tx: etx }) {
            Ok(()) => Ok(erx),
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(InferenceError::Busy(self.config.max_queued))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(InferenceError::ShuttingDown)
            }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn decode_loop(rx: &mpsc::Receiver<Job>, queued: &AtomicUsize, max_active: usize) {
    let mut active: Vec<Job> = Vec::new();
    let mut open = true;
    while open || !active.is_empty() {
        // Admit waiting work; block only when idle.
        while open && active.len() < max_active {
            let next = if active.is_empty() {
                rx.recv_timeout(Duration::from_millis(200))
            } else {
                rx.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            };
            match next {
                Ok(job) => {
                    queued.fetch_sub(1, Ordering::SeqCst);
                    active.push(job);
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        // Drop the sequences whose client went away, then one step for all the others
        // together (batched where they share a native model).
        active.retain(|job| {
            let gone = job.tx.is_closed();
            if gone {
                tracing::info!(target: "chrysalis::scheduler", "client went away; sequence cancelled");
            }
            !gone
        });
        if active.is_empty() {
            continue;
        }
        let results = {
            let mut seqs: Vec<&mut Sequence> = active.iter_mut().map(|j| &mut j.seq).collect();
            step_many(&mut seqs)
        };
        let mut still = Vec::with_capacity(active.len());
        for (job, result) in active.drain(..).zip(results) {
            match result {
                Ok(events) => {
                    let delivered = events.into_iter().all(|ev| job.tx.send(Ok(ev)).is_ok());
                    if delivered && !job.seq.is_done() {
                        still.push(job);
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "chrysalis::scheduler", error = %e, "sequence failed");
                    let _ = job.tx.send(Err(e));
                }
            }
        }
        active = still;
    }
}
