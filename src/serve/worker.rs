//! Workers: whatever runs the model on a batch and answers, eventually or never.
//!
//! The coordinator only sees the [`Worker`] trait, so a worker in another process or on
//! another machine can implement it without touching the coordinator. [`LocalWorker`] is a
//! thread with a bounded queue running a model replica on one Burn device: one forward pass on
//! a `[rows, D]` tensor per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use burn::tensor::{Device, Tensor};
use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::batch::Work;
use super::faults::Outcome;
use crate::fused::Model;

/// One batch for a worker: its coded queries of a dispatch for coded schemes, the plain
/// queries for the baselines.
#[derive(Clone, Debug)]
pub struct Request {
    /// Chosen by the scheme; echoed in the [`Response`].
    pub id: u64,
    /// What to run the model on ([`Work::input`] forms it on the worker's device).
    pub work: Work,
    /// Fault injection, for tests and benchmarks: the fate this batch meets. Workers that
    /// really are remote ignore it.
    pub injected: Option<Outcome>,
    /// Set once the answer is no longer needed; a worker that has not started it skips it.
    pub cancel: Cancel,
}

/// Cancels requests whose answer is no longer needed: the rest of a batch once it has been
/// decoded, the other copies once one has answered, anything past its deadline. A worker
/// queued behind a straggling request then skips the stale work instead of adding it to the
/// delay of every request after it; a call in flight to a remote server waits on
/// [`cancelled`](Cancel::cancelled) beside its answer and is given up. Clones share one flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    /// Wakes the tasks waiting in [`Cancel::cancelled`] (no timer: a woken task, once).
    waiters: tokio::sync::Notify,
}

impl Cancel {
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
        self.0.waiters.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Completes once cancelled.
    pub async fn cancelled(&self) {
        loop {
            // Registered before the flag is read, so a cancel in between is not missed.
            let notified = self.0.waiters.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// Whether `self` and `other` are clones of one flag.
    pub fn same(&self, other: &Cancel) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A worker's answer to one [`Request`]: `rows x C` values, row-major, in the order of the
/// request's rows; `None` when it could not answer (its model failed, its server failed or
/// is down), said at once so that a scheme can send the work elsewhere rather than wait.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub id: u64,
    pub worker: usize,
    pub output: Option<Vec<f32>>,
}

/// Why a worker did not take a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    #[error("worker {0}'s queue is full")]
    Busy(usize),
    #[error("worker {0} has stopped")]
    Stopped(usize),
    #[error("worker {0}'s server is down")]
    Unavailable(usize),
}

/// Runs the model for the coordinator.
pub trait Worker: Send + Sync {
    /// This worker's index among the scheme's workers.
    fn index(&self) -> usize;
    /// The device its model runs on, if it is in this process: workers on one device share
    /// one upload and one encode per dispatch.
    fn device(&self) -> Option<&Device>;
    /// Where it runs, for an operator reading `/metrics` (`approxifer_worker_info`): a remote
    /// server's model URL, or `local` and its device.
    fn location(&self) -> String;
    /// Queues `request`; the answer, if the worker gives one, goes to `replies`. Never blocks.
    fn submit(&self, request: Request, replies: &Sender<Response>) -> Result<(), WorkerError>;
}

/// The model a worker serves: a batch `[B, D]` of flat queries to `[B, C]` predictions, on the
/// batch's device. The same [`Model`] interface the fused runner hosts.
pub type ServedModel = Arc<dyn Model<2> + Send + Sync>;

/// How a [`LocalWorker`] alters one answer row when fault injection makes it Byzantine
/// ([`Outcome::Tampered`]): the hook attack models plug into.
pub type Tamper = Arc<dyn Fn(&mut Vec<f32>) + Send + Sync>;

/// The default [`Tamper`]: a sign flip of every value.
pub fn sign_flip() -> Tamper {
    Arc::new(|output: &mut Vec<f32>| output.iter_mut().for_each(|v| *v = -*v))
}

/// A worker thread in this process with a bounded queue and a model replica on one device,
/// honouring injected faults: it sleeps for an injected latency, drops a hung request, and
/// stops answering after a crash.
pub struct LocalWorker {
    index: usize,
    device: Device,
    queue: Sender<(Request, Sender<Response>)>,
    /// Set on drop: queued requests are then discarded instead of run.
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl LocalWorker {
    /// Starts worker `index` running `model` on `device`, with room for `capacity` queued
    /// requests; a Byzantine answer is sign-flipped.
    pub fn start(index: usize, model: ServedModel, device: Device, capacity: usize) -> Self {
        Self::with_tamper(index, model, device, capacity, sign_flip())
    }

    /// [`start`](Self::start), with `tamper` altering each row of a Byzantine answer.
    pub fn with_tamper(index: usize, model: ServedModel, device: Device, capacity: usize, tamper: Tamper) -> Self {
        let (queue, jobs) = crossbeam_channel::bounded::<(Request, Sender<Response>)>(capacity.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let runner =
            Runner { index, model, device: device.clone(), tamper, stop: stop.clone(), counters: counters.clone() };
        let thread = std::thread::Builder::new()
            .name(format!("approxifer-worker-{index}"))
            .spawn(move || runner.run(&jobs))
            .expect("spawning a worker thread");
        LocalWorker { index, device, queue, stop, counters, thread: Some(thread) }
    }

    /// Time spent serving so far, hung requests excluded (a hung worker is not busy).
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.counters.busy_ns.load(Ordering::Relaxed))
    }

    /// Requests skipped because they were cancelled before this worker started them.
    pub fn skipped(&self) -> u64 {
        self.counters.skipped.load(Ordering::Relaxed)
    }

    /// Requests lost to a failure of the model or of forming its input (no answer was given).
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

/// What a [`LocalWorker`] has done, for the worker budget and for tests.
#[derive(Default)]
struct Counters {
    /// Nanoseconds spent serving (injected latency, forming the input and the model).
    busy_ns: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
}

/// The worker thread's state.
struct Runner {
    index: usize,
    model: ServedModel,
    device: Device,
    tamper: Tamper,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Runner {
    fn run(&self, jobs: &Receiver<(Request, Sender<Response>)>) {
        let mut crashed = false;
        for (request, reply) in jobs.iter() {
            let start = Instant::now();
            match request.injected {
                _ if crashed || self.stop.load(Ordering::Relaxed) => continue,
                Some(Outcome::Crash) => {
                    crashed = true;
                    continue;
                }
                _ if request.cancel.is_cancelled() => {
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(Outcome::Hang) => continue,
                // Sleeps out the injected delay; on to the model unless stopped meanwhile.
                Some(Outcome::Answer(delay) | Outcome::Tampered(delay)) if !self.sleep_unless_stopped(delay) => {
                    continue;
                }
                _ => {}
            }
            // A model that panics or fails loses this request (the scheme is told it has no
            // answer), not the worker.
            let output = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(&request.work)));
            self.counters.busy_ns.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let Ok(Some(mut output)) = output else {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Response { id: request.id, worker: self.index, output: None });
                continue;
            };
            if matches!(request.injected, Some(Outcome::Tampered(_))) {
                self.tamper_rows(&mut output, request.work.rows());
            }
            // The scheme may have stopped listening (shutdown): nothing left to do then.
            let _ = reply.send(Response { id: request.id, worker: self.index, output: Some(output) });
        }
    }

    /// Sleeps for an injected `delay`, in slices, so that dropping the worker does not wait for
    /// a long one (a plan can inject up to a day); false if stopped meanwhile.
    fn sleep_unless_stopped(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    /// One forward pass on the work's rows, read back: `rows x C` values, or `None` when the
    /// input could not be formed or the model answered something else.
    fn answer(&self, work: &Work) -> Option<Vec<f32>> {
        let input: Tensor<2> = work.input(&self.device).ok()?;
        let output = self.model.forward(input);
        let [rows, _] = output.dims();
        if rows != work.rows() {
            return None;
        }
        output.try_into_data().ok()?.convert::<f32>().try_into_vec::<f32>().ok()
    }

    fn tamper_rows(&self, output: &mut [f32], rows: usize) {
        let width = output.len() / rows.max(1);
        for row in output.chunks_exact_mut(width.max(1)) {
            let mut values = row.to_vec();
            (self.tamper)(&mut values);
            if values.len() == row.len() {
                row.copy_from_slice(&values);
            }
        }
    }
}

impl Worker for LocalWorker {
    fn index(&self) -> usize {
        self.index
    }

    fn device(&self) -> Option<&Device> {
        Some(&self.device)
    }

    fn location(&self) -> String {
        format!("local {:?}", self.device)
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

/// Sends each `(worker, work)` to its worker with no fault and waits for the answers, until
/// `until` at most. Schemes warm their workers up with it: a device compiles and tunes kernels
/// for each new range of batch sizes, per worker thread, seconds on some drivers (lavapipe),
/// which must not fall within the first queries' deadlines. Workers outside this process are
/// left out: their servers warm themselves, and one that is slow or down must not hold up the
/// start.
pub(crate) fn warm_up(workers: &[Arc<dyn Worker>], jobs: Vec<(usize, Work)>, until: Instant) {
    let (answers, replies) = crossbeam_channel::unbounded();
    let mut sent = 0;
    for (w, work) in jobs.into_iter().filter(|(w, _)| workers[*w].device().is_some()) {
        let request = Request { id: 0, work, injected: None, cancel: Cancel::default() };
        sent += usize::from(workers[w].submit(request, &answers).is_ok());
    }
    for _ in 0..sent {
        if replies.recv_deadline(until).is_err() {
            return;
        }
    }
}

/// The batch sizes a warm-up covers up to `max`: the powers of two, then `max` itself.
pub(crate) fn warm_up_sizes(max: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> =
        std::iter::successors(Some(1usize), |s| s.checked_mul(2)).take_while(|&s| s < max).collect();
    sizes.push(max.max(1));
    sizes
}
