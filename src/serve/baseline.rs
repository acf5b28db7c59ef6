//! What users run today, under the same workers, faults and dynamic batching as the
//! coordinator: each batch of queries to one worker (uncoded), to `r` workers with the first
//! answer winning (replication), or to one worker and, if it has not answered after a delay,
//! to a second (hedged requests); always to the workers with the fewest requests outstanding,
//! as a load balancer's least-request policy would.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::answer::{Answer, LiveStats, ServeError, Stats, Ticket};
use super::batch::{Dispatch, Work};
use super::faults::FaultPlan;
use super::front::{self, Batcher, Front, Submission, answer, locations};
use super::lag::Lag;
use super::worker::{Cancel, Request, Response, Worker, warm_up, warm_up_sizes};

/// How a baseline spreads one query over the workers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// One worker per query.
    Uncoded,
    /// `copies` workers per query; the first answer wins.
    Replication { copies: usize },
    /// One worker, and a second one if no answer came within `after`.
    Hedged { after: Duration },
}

/// How a baseline runs.
#[derive(Clone, Debug)]
pub struct BaselineConfig {
    pub policy: Policy,
    pub input_len: usize,
    pub output_len: usize,
    /// The most queries in one batch (one request, one forward pass).
    pub max_batch: usize,
    /// A batch that is not full is sent this long after its oldest query arrived.
    pub max_queue_delay: Duration,
    pub deadline: Duration,
    pub capacity: usize,
    pub faults: Option<(FaultPlan, u64)>,
}

/// A running baseline, with the coordinator's interface: admission up to a capacity, one
/// answer or error per accepted query, graceful shutdown on drop.
pub struct Baseline {
    front: Front,
}

impl Baseline {
    pub fn start(config: BaselineConfig, workers: Vec<Arc<dyn Worker>>) -> Result<Self, String> {
        let copies = match config.policy {
            Policy::Replication { copies } => copies,
            Policy::Hedged { .. } => 2,
            Policy::Uncoded => 1,
        };
        if copies == 0 || workers.len() < copies {
            return Err(format!("{:?} needs at least {} workers, got {}", config.policy, copies.max(1), workers.len()));
        }
        if let Some((plan, _)) = &config.faults {
            plan.validate().map_err(|e| e.to_string())?;
        }
        if config.input_len == 0 || config.output_len == 0 || config.capacity == 0 || config.max_batch == 0 {
            return Err("input and output lengths, the capacity and the batch size must be at least 1".into());
        }
        let (capacity, input_len) = (config.capacity, config.input_len);
        // Every worker runs a zero batch of each range of sizes first (see `warm_up`).
        let until = Instant::now() + Duration::from_secs(60);
        for rows in warm_up_sizes(config.max_batch) {
            let dispatch = Arc::new(Dispatch::new(vec![0.0; rows * input_len], input_len, Vec::new()));
            let devices: Vec<_> = workers.iter().map(|w| w.device()).collect();
            let works = Work::by_device(&dispatch, &devices, vec![None; workers.len()]);
            warm_up(&workers, works.into_iter().enumerate().collect(), until);
        }
        let (sizes, placed) = ((capacity, input_len), locations(&workers));
        let front = Front::spawn("approxifer-baseline", sizes, placed, move |incoming, in_flight, live| {
            let state = Loop {
                faults: config.faults.clone().map(|(plan, seed)| (plan, StdRng::seed_from_u64(seed))),
                served: vec![0; workers.len()],
                lag: Lag::new(workers.len()),
                next_worker: 0,
                batcher: Batcher::new(config.max_batch, config.max_queue_delay),
                pending: HashMap::new(),
                routes: HashMap::new(),
                next_batch: 0,
                next_request: 0,
                replies: crossbeam_channel::unbounded(),
                stats: Stats::for_workers(workers.len()),
                in_flight,
                live,
                workers,
                config,
            };
            state.run(incoming)
        })?;
        Ok(Baseline { front })
    }

    /// As [`super::Coordinator::submit`].
    pub fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        self.front.submit(query)
    }

    /// As [`super::Coordinator::submit_all`].
    pub fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        self.front.submit_all(queries)
    }

    /// As [`submit_all`](Self::submit_all), with the handle that abandons the queries
    /// ([`Scheme::submit_cancellable`](super::Scheme::submit_cancellable)).
    pub fn submit_cancellable(&self, queries: Vec<Vec<f32>>) -> Result<(Vec<Ticket>, Cancel), ServeError> {
        self.front.submit_cancellable(queries)
    }

    /// Where each of its workers runs, in index order.
    pub fn worker_locations(&self) -> &[String] {
        self.front.worker_locations()
    }

    /// Queries accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.front.in_flight()
    }

    /// The counts so far (no timelines).
    pub fn stats(&self) -> Stats {
        self.front.stats()
    }

    /// As [`super::Coordinator::shutdown`].
    pub fn shutdown(mut self) -> Stats {
        self.front.stop()
    }
}

/// A batch in flight.
struct Pending {
    replies: Vec<Sender<Result<Answer, ServeError>>>,
    dispatch: Arc<Dispatch>,
    deadline: Instant,
    /// When to send the hedge, until it is sent.
    hedge_at: Option<Instant>,
    sent_to: Vec<usize>,
    requests: Vec<u64>,
    /// Cancels the copies not yet started once one has answered or the deadline passed.
    cancel: Cancel,
    /// Its queries' abandonment flags ([`front::abandonments`]): all set, it is cancelled.
    abandonments: Vec<Cancel>,
}

struct Loop {
    config: BaselineConfig,
    workers: Vec<Arc<dyn Worker>>,
    in_flight: Arc<AtomicUsize>,
    live: LiveStats,
    faults: Option<(FaultPlan, StdRng)>,
    served: Vec<u64>,
    /// What each worker is running, for its service times.
    lag: Lag,
    next_worker: usize,
    batcher: Batcher,
    pending: HashMap<u64, Pending>,
    /// Request id -> its batch and worker.
    routes: HashMap<u64, (u64, usize)>,
    next_batch: u64,
    next_request: u64,
    replies: (Sender<Response>, Receiver<Response>),
    stats: Stats,
}

impl Loop {
    fn run(mut self, mut incoming: Receiver<Submission>) -> Stats {
        let mut open = true;
        let replies = self.replies.1.clone();
        loop {
            let now = Instant::now();
            let timers = self.pending.values().flat_map(|p| [Some(p.deadline), p.hedge_at]).flatten().min();
            let wake = [self.batcher.wake(), timers].into_iter().flatten().min();
            let timeout = wake.map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(now));
            select! {
                recv(incoming) -> message => match message {
                    Ok(submission) => self.batcher.push(submission),
                    Err(_) => {
                        open = false;
                        incoming = crossbeam_channel::never();
                    }
                },
                recv(replies) -> response => {
                    if let Ok(response) = response {
                        self.receive(response);
                    }
                },
                default(timeout) => {}
            }
            let now = Instant::now();
            self.drop_abandoned();
            while self.batcher.due(now, !open) {
                let batch = self.batcher.take(&mut self.stats);
                self.dispatch(batch);
            }
            self.timers(now);
            self.live.publish(&self.stats);
            if !open && self.batcher.is_empty() && self.pending.is_empty() {
                return self.stats;
            }
        }
    }

    fn dispatch(&mut self, submissions: Vec<Submission>) {
        let id = self.next_batch;
        self.next_batch += 1;
        self.stats.batches += 1;
        self.stats.groups += submissions.len() as u64;
        let abandonments = front::abandonments(&submissions);
        let mut queries = Vec::with_capacity(submissions.len() * self.config.input_len);
        let mut replies = Vec::with_capacity(submissions.len());
        for submission in submissions {
            queries.extend_from_slice(&submission.query);
            replies.push(submission.reply);
        }
        let now = Instant::now();
        let (copies, hedge_at) = match self.config.policy {
            Policy::Uncoded => (1, None),
            Policy::Replication { copies } => (copies, None),
            Policy::Hedged { after } => (1, Some(now + after)),
        };
        let mut pending = Pending {
            replies,
            dispatch: Arc::new(Dispatch::new(queries, self.config.input_len, Vec::new())),
            deadline: now + self.config.deadline,
            hedge_at,
            sent_to: Vec::new(),
            requests: Vec::new(),
            cancel: Cancel::default(),
            abandonments,
        };
        self.send(id, &mut pending, copies);
        if pending.sent_to.is_empty() && pending.hedge_at.is_none() {
            let error = ServeError::WorkersUnavailable { available: 0, needed: 1 };
            let count = pending.replies.len() as u64;
            self.stats.failed_groups += count;
            for reply in pending.replies {
                self.answer(reply, Err(error.clone()));
            }
            return;
        }
        self.pending.insert(id, pending);
    }

    /// Sends the batch to `copies` workers it has not been sent to, those with the fewest
    /// requests outstanding first (a load balancer's least-request policy: a batch does not
    /// queue behind a straggler while another worker is free), ties in round-robin order,
    /// passing over any that refuse it (a full queue, a server that is down); copies on one
    /// device share one upload.
    fn send(&mut self, id: u64, pending: &mut Pending, copies: usize) {
        let n = self.workers.len();
        let mut outstanding = vec![0usize; n];
        for &(_, w) in self.routes.values() {
            outstanding[w] += 1;
        }
        let mut candidates: Vec<usize> =
            (0..n).map(|i| (self.next_worker + i) % n).filter(|w| !pending.sent_to.contains(w)).collect();
        // Stable: equally loaded workers keep their round-robin order.
        candidates.sort_by_key(|&w| outstanding[w]);
        let devices: Vec<_> = candidates.iter().map(|&w| self.workers[w].device()).collect();
        let works = Work::by_device(&pending.dispatch, &devices, vec![None; candidates.len()]);
        let mut taken = 0;
        for (w, work) in candidates.into_iter().zip(works) {
            if taken == copies {
                break;
            }
            self.next_worker = (w + 1) % n;
            // Each copy is its own dispatch: a random slowdown strikes each independently.
            let injected = match &mut self.faults {
                Some((plan, rng)) => plan.draw(&[(w, self.served[w])], rng).pop(),
                None => None,
            };
            let request_id = self.next_request;
            self.next_request += 1;
            self.served[w] += 1;
            let request = Request { id: request_id, work, injected, cancel: pending.cancel.clone() };
            if self.workers[w].submit(request, &self.replies.0).is_ok() {
                taken += 1;
                pending.sent_to.push(w);
                pending.requests.push(request_id);
                self.routes.insert(request_id, (id, w));
                self.lag.sent(w, request_id, Instant::now());
                self.stats.sent(w);
            }
        }
    }

    fn receive(&mut self, response: Response) {
        let busy = self.lag.answered(response.worker, response.id, Instant::now());
        let id = self.routes.remove(&response.id).map(|(id, _)| id);
        let c = self.config.output_len;
        let expected = id.and_then(|id| self.pending.get(&id)).map(|p| p.replies.len() * c);
        let (output, id) = match (response.output, id, expected) {
            (Some(output), Some(id), Some(len)) if output.len() == len => (output, id),
            // No answer, or one that cannot be split into the batch's rows: as a load balancer
            // retries, the batch goes at once to a worker it was not sent to.
            (_, Some(id), Some(_)) => {
                let mut pending = self.pending.remove(&id).expect("the batch is pending");
                self.send(id, &mut pending, 1);
                self.pending.insert(id, pending);
                return;
            }
            // An answer to a batch already answered or expired.
            (Some(_), _, _) => {
                self.stats.answered(response.worker, busy, true);
                return;
            }
            (None, _, _) => return,
        };
        self.stats.answered(response.worker, busy, false);
        let pending = self.pending.remove(&id).expect("the batch is pending");
        pending.cancel.cancel();
        self.forget(&pending.requests);
        self.stats.decoded_groups += pending.replies.len() as u64;
        for (reply, output) in pending.replies.into_iter().zip(output.chunks_exact(c)) {
            self.answer(reply, Ok(Answer { output: output.to_vec(), approximate: false }));
        }
    }

    fn timers(&mut self, now: Instant) {
        let hedges: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.hedge_at.is_some_and(|t| t <= now)).map(|(&id, _)| id).collect();
        for id in hedges {
            let mut pending = self.pending.remove(&id).expect("listed as pending");
            pending.hedge_at = None;
            self.send(id, &mut pending, 1);
            self.pending.insert(id, pending);
        }
        let expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(&id, _)| id).collect();
        for id in expired {
            let pending = self.pending.remove(&id).expect("listed as pending");
            pending.cancel.cancel();
            self.forget(&pending.requests);
            self.stats.failed_groups += pending.replies.len() as u64;
            let error =
                ServeError::DeadlineMissed { answered: 0, needed: 1, deadline_ms: self.config.deadline.as_millis() };
            for reply in pending.replies {
                self.answer(reply, Err(error.clone()));
            }
        }
    }

    /// As the coordinator's: answers [`ServeError::Cancelled`] to the queries nobody waits
    /// for, those not sent and the batches of nothing else, whose requests are cancelled.
    fn drop_abandoned(&mut self) {
        for submission in self.batcher.take_abandoned() {
            self.answer(submission.reply, Err(ServeError::Cancelled));
        }
        for pending in front::take_abandoned(&mut self.pending, |p| &p.abandonments) {
            pending.cancel.cancel();
            self.forget(&pending.requests);
            for reply in pending.replies {
                self.answer(reply, Err(ServeError::Cancelled));
            }
        }
    }

    /// Drops the routes of cancelled `requests`.
    fn forget(&mut self, requests: &[u64]) {
        for r in requests {
            if let Some((_, w)) = self.routes.remove(r) {
                self.lag.cancelled(w, *r);
            }
        }
    }

    fn answer(&mut self, reply: Sender<Result<Answer, ServeError>>, result: Result<Answer, ServeError>) {
        answer(&self.in_flight, &mut self.stats, reply, result);
    }
}
