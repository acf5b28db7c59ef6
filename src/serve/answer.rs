//! What every scheme gives back: an [`Answer`] or a [`ServeError`] per accepted query, on its
//! [`Ticket`], and the [`Stats`] of a run.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::batch::FormError;
use crate::kernels::Error as CodecError;
use crate::kernels::gpu::GpuError;

/// A prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub output: Vec<f32>,
    /// Decoded from other workers' answers, not computed on this query itself.
    pub approximate: bool,
}

/// Why a query got no prediction. Every accepted query gets exactly one answer or one of these.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{in_flight} queries in flight, the coordinator's capacity; retry later")]
    Overloaded { in_flight: usize },
    #[error("a query has {actual} values; the model takes {expected}")]
    BadInput { expected: usize, actual: usize },
    #[error("only {answered} workers answered within the {deadline_ms} ms deadline; decoding needs {needed}")]
    DeadlineMissed { answered: usize, needed: usize, deadline_ms: u128 },
    #[error("only {available} workers took the group; decoding needs {needed}")]
    WorkersUnavailable { available: usize, needed: usize },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    /// Whoever waited for the query went away first (an HTTP client that closed its
    /// connection): it was dropped before its work was sent, or its batch was cancelled.
    #[error("the client went away before its answer")]
    Cancelled,
    #[error("coding failed: {0}")]
    Coding(Arc<CodingError>),
}

/// Where a query's answer arrives: exactly one message.
pub type Ticket = Receiver<Result<Answer, ServeError>>;

/// What happened over a coordinator's life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Dispatches: batches of groups (coded) or of queries (baselines).
    pub batches: u64,
    pub groups: u64,
    pub decoded_groups: u64,
    pub failed_groups: u64,
    pub answered: u64,
    /// Queries that got an error, those cancelled aside.
    pub errors: u64,
    /// Queries whose client went away before their answer ([`ServeError::Cancelled`]): not
    /// errors, and not worked on from then on.
    pub cancelled: u64,
    /// Worker answers that came after their group was decoded or failed.
    pub late_responses: u64,
    /// Coded queries re-sent to another worker (see
    /// [`CoordinatorConfig::hedge_after`](super::CoordinatorConfig::hedge_after)).
    pub hedged_requests: u64,
    /// Coded queries of a lagging worker also given to another at dispatch (see
    /// [`CoordinatorConfig::hedge_after`](super::CoordinatorConfig::hedge_after)).
    pub covered_parts: u64,
    /// Batches decoded when their grace for their last answers ended, an answer or more still
    /// missing: a straggler's (see
    /// [`CoordinatorConfig::decode_grace`](super::CoordinatorConfig::decode_grace)).
    pub grace_expired: u64,
    /// Answers holding NaN or infinity: dropped on arrival, as if never given.
    pub non_finite_answers: u64,
    /// Workers the locator removed from decoded groups (codes with `A > 0`).
    pub located_workers: u64,
    /// Time spent locating and decoding, in nanoseconds (the coordinator's share of coding).
    pub decode_ns: u64,
    /// Queries dispatched, and their total wait in the batcher from acceptance to dispatch.
    pub queued_queries: u64,
    pub queue_ns: u64,
    /// Per worker, what it was sent and how it answered: where a straggler or a liar shows.
    pub workers: Vec<WorkerStats>,
    /// The slowest batches' timelines, slowest first (coded schemes, when asked:
    /// [`CoordinatorConfig::trace_slower_than`](super::CoordinatorConfig::trace_slower_than)).
    pub slow_batches: Vec<super::trace::BatchTrace>,
}

impl Stats {
    /// No counts yet, for a scheme driving `workers` workers.
    pub(crate) fn for_workers(workers: usize) -> Stats {
        Stats { workers: vec![WorkerStats::default(); workers], ..Stats::default() }
    }

    /// Worker `w`'s counts (`None` for an index no worker has: a remote answer's worker
    /// field is not trusted to be in range).
    pub(crate) fn worker(&mut self, w: usize) -> Option<&mut WorkerStats> {
        self.workers.get_mut(w)
    }

    /// A request went to worker `w`.
    pub(crate) fn sent(&mut self, w: usize) {
        if let Some(worker) = self.worker(w) {
            worker.requests += 1;
        }
    }

    /// Worker `w` answered, after `busy` on the request (`None`: not known), `late` when its
    /// batch no longer needed it.
    pub(crate) fn answered(&mut self, w: usize, busy: Option<Duration>, late: bool) {
        if late {
            self.late_responses += 1;
        }
        if let Some(worker) = self.worker(w) {
            worker.answers += 1;
            worker.late_answers += u64::from(late);
            worker.busy_ns += busy.map_or(0, |b| u64::try_from(b.as_nanos()).unwrap_or(u64::MAX));
        }
    }
}

/// What one worker was sent and answered, as the scheme driving it saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerStats {
    pub requests: u64,
    /// Answers of any kind, on time or late.
    pub answers: u64,
    /// Answers that came after their batch was answered or failed.
    pub late_answers: u64,
    /// Rows of its answers holding NaN or infinity (coded schemes).
    pub non_finite_rows: u64,
    /// Groups whose answer from this worker the Byzantine locator judged (codes with `A > 0`),
    /// and of them those it removed the answer from.
    pub judged: u64,
    pub located: u64,
    /// Time spent on the requests it answered, each from when the worker could start it (it
    /// was sent, or the worker's previous answer came), in nanoseconds: over `answers`, its
    /// mean service time.
    pub busy_ns: u64,
}

/// A running scheme's counts, for `/metrics`: its thread publishes them after every turn of
/// its loop, and anyone holding a clone reads the latest.
#[derive(Clone, Debug, Default)]
pub(crate) struct LiveStats(Arc<Mutex<Stats>>);

impl LiveStats {
    /// Publishes `stats`' counts (not its batch timelines, which only the stop returns).
    pub fn publish(&self, stats: &Stats) {
        let mut published = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // In place: the per-worker counts' buffer is reused, as this runs every loop turn.
        let workers = std::mem::take(&mut published.workers);
        *published = Stats { workers, slow_batches: Vec::new(), ..*stats };
        published.workers.clone_from(&stats.workers);
    }

    pub fn read(&self) -> Stats {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Why a batch could not be coded or decoded: kept typed from the layer that failed.
#[derive(Debug, thiserror::Error)]
pub enum CodingError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Form(#[from] FormError),
}

impl From<CodingError> for ServeError {
    fn from(e: CodingError) -> Self {
        ServeError::Coding(Arc::new(e))
    }
}
