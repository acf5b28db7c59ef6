//! What users run today, under the same workers and faults as the coordinator: each query to
//! one worker (uncoded), to `r` workers with the first answer winning (replication), or to one
//! worker and, if it has not answered after a delay, to a second (hedged requests).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::coordinator::{Answer, ServeError, Stats, Ticket};
use super::faults::FaultPlan;
use super::front::{Front, Submission, answer};
use super::worker::{Cancel, Request, Response, Worker};

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
        let (capacity, input_len) = (config.capacity, config.input_len);
        let front = Front::spawn("approxifer-baseline", capacity, input_len, move |incoming, in_flight| {
            let state = Loop {
                faults: config.faults.clone().map(|(plan, seed)| (plan, StdRng::seed_from_u64(seed))),
                served: vec![0; workers.len()],
                next_worker: 0,
                pending: HashMap::new(),
                next_id: 0,
                replies: crossbeam_channel::unbounded(),
                stats: Stats::default(),
                in_flight,
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

    /// Queries accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.front.in_flight()
    }

    /// As [`super::Coordinator::shutdown`].
    pub fn shutdown(mut self) -> Stats {
        self.front.stop()
    }
}

/// A query in flight.
struct Pending {
    reply: Sender<Result<Answer, ServeError>>,
    input: Arc<[f32]>,
    deadline: Instant,
    /// When to send the hedge, until it is sent.
    hedge_at: Option<Instant>,
    sent_to: Vec<usize>,
    /// Cancels the copies not yet started once one has answered or the deadline passed.
    cancel: Cancel,
}

struct Loop {
    config: BaselineConfig,
    workers: Vec<Arc<dyn Worker>>,
    in_flight: Arc<AtomicUsize>,
    faults: Option<(FaultPlan, StdRng)>,
    served: Vec<u64>,
    next_worker: usize,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    replies: (Sender<Response>, Receiver<Response>),
    stats: Stats,
}

impl Loop {
    fn run(mut self, mut incoming: Receiver<Submission>) -> Stats {
        let mut open = true;
        let replies = self.replies.1.clone();
        loop {
            let now = Instant::now();
            let wake = self.pending.values().flat_map(|p| [Some(p.deadline), p.hedge_at]).flatten().min();
            let timeout = wake.map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(now));
            select! {
                recv(incoming) -> message => match message {
                    Ok(submission) => self.dispatch(submission),
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
            self.timers(Instant::now());
            if !open && self.pending.is_empty() {
                return self.stats;
            }
        }
    }

    fn dispatch(&mut self, submission: Submission) {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.groups += 1;
        let input: Arc<[f32]> = submission.query.into();
        let now = Instant::now();
        let (copies, hedge_at) = match self.config.policy {
            Policy::Uncoded => (1, None),
            Policy::Replication { copies } => (copies, None),
            Policy::Hedged { after } => (1, Some(now + after)),
        };
        let mut pending = Pending {
            reply: submission.reply,
            input,
            deadline: now + self.config.deadline,
            hedge_at,
            sent_to: Vec::new(),
            cancel: Cancel::default(),
        };
        for _ in 0..copies {
            self.send(id, &mut pending);
        }
        if pending.sent_to.is_empty() && pending.hedge_at.is_none() {
            let error = ServeError::WorkersUnavailable { available: 0, needed: 1 };
            return self.answer(pending.reply, Err(error));
        }
        self.pending.insert(id, pending);
    }

    /// Sends the query to the next worker it has not been sent to (round robin), if one takes it.
    fn send(&mut self, id: u64, pending: &mut Pending) {
        let n = self.workers.len();
        for _ in 0..n {
            let w = self.next_worker;
            self.next_worker = (self.next_worker + 1) % n;
            if pending.sent_to.contains(&w) {
                continue;
            }
            let injected = match &mut self.faults {
                Some((plan, rng)) => plan.draw(&[(w, self.served[w])], rng).pop(),
                None => None,
            };
            self.served[w] += 1;
            let request = Request { id, input: pending.input.clone(), injected, cancel: pending.cancel.clone() };
            if self.workers[w].submit(request, &self.replies.0).is_ok() {
                pending.sent_to.push(w);
                return;
            }
        }
    }

    fn receive(&mut self, response: Response) {
        let Some(pending) = self.pending.remove(&response.id) else {
            self.stats.late_responses += 1;
            return;
        };
        if response.output.len() != self.config.output_len {
            self.pending.insert(response.id, pending);
            return;
        }
        pending.cancel.cancel();
        self.stats.decoded_groups += 1;
        self.answer(pending.reply, Ok(Answer { output: response.output, approximate: false }));
    }

    fn timers(&mut self, now: Instant) {
        let hedges: Vec<u64> =
            self.pending.iter().filter(|(_, p)| p.hedge_at.is_some_and(|t| t <= now)).map(|(&id, _)| id).collect();
        for id in hedges {
            let mut pending = self.pending.remove(&id).expect("listed as pending");
            pending.hedge_at = None;
            self.send(id, &mut pending);
            self.pending.insert(id, pending);
        }
        let expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(&id, _)| id).collect();
        for id in expired {
            let pending = self.pending.remove(&id).expect("listed as pending");
            pending.cancel.cancel();
            self.stats.failed_groups += 1;
            let error =
                ServeError::DeadlineMissed { answered: 0, needed: 1, deadline_ms: self.config.deadline.as_millis() };
            self.answer(pending.reply, Err(error));
        }
    }

    fn answer(&mut self, reply: Sender<Result<Answer, ServeError>>, result: Result<Answer, ServeError>) {
        answer(&self.in_flight, &mut self.stats, reply, result);
    }
}
