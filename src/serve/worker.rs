//! Workers: whatever runs the model on one input and answers, eventually or never.
//!
//! The coordinator only sees the [`Worker`] trait, so a worker in another process or on
//! another machine can implement it later without touching the coordinator. [`LocalWorker`]
//! is a thread with a bounded queue running a model in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::faults::Outcome;

/// One input for a worker: a coded query for coded schemes, a plain one for the baselines.
#[derive(Clone, Debug)]
pub struct Request {
    /// Chosen by the coordinator; echoed in the [`Response`].
    pub id: u64,
    pub input: Arc<[f32]>,
    /// Fault injection, for tests and benchmarks: the fate this request meets. Workers that
    /// really are remote ignore it.
    pub injected: Option<Outcome>,
    /// Set once the answer is no longer needed; a worker that has not started it skips it.
    pub cancel: Cancel,
}

/// Cancels requests whose answer is no longer needed: the rest of a group once it has been
/// decoded, the other copies once one has answered, anything past its deadline. A worker
/// queued behind a straggling request then skips the stale work instead of adding it to the
/// delay of every request after it. Clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A worker's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: u64,
    pub worker: usize,
    pub output: Vec<f32>,
}

/// Why a worker did not take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {0}'s queue is full")]
    Busy(usize),
    #[error("worker {0} has stopped")]
    Stopped(usize),
}

/// Runs the model for the coordinator.
pub trait Worker: Send + Sync {
    /// This worker's index among the coordinator's workers.
    fn index(&self) -> usize;
    /// Queues `request`; the answer, if the worker gives one, goes to `replies`. Never blocks.
    fn submit(&self, request: Request, replies: &Sender<Response>) -> Result<(), WorkerError>;
}

/// The model a [`LocalWorker`] runs: one input row to one output row.
pub type HostModel = Arc<dyn Fn(&[f32]) -> Vec<f32> + Send + Sync>;

/// How a [`LocalWorker`] alters an answer when fault injection makes it Byzantine
/// ([`Outcome::Tampered`]): the hook attack models plug into.
pub type Tamper = Arc<dyn Fn(&mut Vec<f32>) + Send + Sync>;

/// The default [`Tamper`]: a sign flip of every value.
pub fn sign_flip() -> Tamper {
    Arc::new(|output: &mut Vec<f32>| output.iter_mut().for_each(|v| *v = -*v))
}

/// A worker thread in this process with a bounded queue, honouring injected faults: it sleeps
/// for an injected latency, drops a hung request, and stops answering after a crash.
pub struct LocalWorker {
    index: usize,
    queue: Sender<(Request, Sender<Response>)>,
    /// Set on drop: queued requests are then discarded instead of run.
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl LocalWorker {
    /// Starts worker `index` running `model`, with room for `capacity` queued requests; a
    /// Byzantine answer is sign-flipped.
    pub fn start(index: usize, model: HostModel, capacity: usize) -> Self {
        Self::with_tamper(index, model, capacity, sign_flip())
    }

    /// [`start`](Self::start), with `tamper` altering Byzantine answers.
    pub fn with_tamper(index: usize, model: HostModel, capacity: usize, tamper: Tamper) -> Self {
        let (queue, jobs) = crossbeam_channel::bounded::<(Request, Sender<Response>)>(capacity.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (stopping, counting) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name(format!("approxifer-worker-{index}"))
            .spawn(move || run(index, &model, &tamper, &jobs, &stopping, &counting))
            .expect("spawning a worker thread");
        LocalWorker { index, queue, stop, counters, thread: Some(thread) }
    }

    /// Time spent serving so far, hung requests excluded (a hung worker is not busy).
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.counters.busy_ns.load(Ordering::Relaxed))
    }

    /// Requests skipped because they were cancelled before this worker started them.
    pub fn skipped(&self) -> u64 {
        self.counters.skipped.load(Ordering::Relaxed)
    }
}

/// What a [`LocalWorker`] has done, for the worker budget and for tests.
#[derive(Default)]
struct Counters {
    /// Nanoseconds spent serving (injected latency and the model).
    busy_ns: AtomicU64,
    skipped: AtomicU64,
}

fn run(
    index: usize,
    model: &HostModel,
    tamper: &Tamper,
    jobs: &Receiver<(Request, Sender<Response>)>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut crashed = false;
    for (request, reply) in jobs.iter() {
        let start = Instant::now();
        match request.injected {
            _ if crashed || stop.load(Ordering::Relaxed) => continue,
            Some(Outcome::Crash) => {
                crashed = true;
                continue;
            }
            _ if request.cancel.is_cancelled() => {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Some(Outcome::Hang) => continue,
            Some(Outcome::Answer(delay) | Outcome::Tampered(delay)) if !delay.is_zero() => std::thread::sleep(delay),
            _ => {}
        }
        let tampered = matches!(request.injected, Some(Outcome::Tampered(_)));
        // A model that panics loses this request (the coordinator sees no answer), not the worker.
        let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model(&request.input)));
        counters.busy_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let Ok(mut output) = output else { continue };
        if tampered {
            tamper(&mut output);
        }
        // The coordinator may have stopped listening (shutdown): nothing left to do then.
        let _ = reply.send(Response { id: request.id, worker: index, output });
    }
}

impl Worker for LocalWorker {
    fn index(&self) -> usize {
        self.index
    }

    fn submit(&self, request: Request, replies: &Sender<Response>) -> Result<(), WorkerError> {
        self.queue.try_send((request, replies.clone())).map_err(|e| match e {
            TrySendError::Full(_) => WorkerError::Busy(self.index),
            TrySendError::Disconnected(_) => WorkerError::Stopped(self.index),
        })
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has discarded what it holds.
        self.stop.store(true, Ordering::Relaxed);
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.queue, closed));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
