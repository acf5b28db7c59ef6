//! ParM in serving (Kosaian et al., SOSP 2019), the learned baseline at ApproxIFER's resources:
//! `K` data workers run the hosted model on the raw queries of each group, one parity worker
//! runs the parity model on their sum ([`crate::parm`]); a group with one data answer missing
//! rebuilds it by subtraction once the parity has answered, a group missing more waits. All
//! `K + 1` workers answer logits; users get their softmax, as from the other schemes.
//!
//! Batched like the others: a batch of up to `max_batch` groups gives each data worker one row
//! per group and the parity worker one sum per group. A last group with fewer than `K` queries
//! is padded with zero queries, which the data workers answer like any other, so that the
//! subtraction still holds and every query is protected.

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

/// How ParM runs.
#[derive(Clone, Debug)]
pub struct ParmConfig {
    /// Queries per group: `K` data workers and one parity worker.
    pub k: usize,
    pub input_len: usize,
    /// Logits per query.
    pub output_len: usize,
    /// The most groups in one batch (each worker's forward pass takes at most this many rows).
    pub max_batch: usize,
    pub max_queue_delay: Duration,
    pub deadline: Duration,
    pub capacity: usize,
    pub faults: Option<(FaultPlan, u64)>,
}

/// A running ParM scheme, with the coordinator's interface.
pub struct Parm {
    front: Front,
}

impl Parm {
    /// Starts ParM over `workers`: the first `K` run the hosted model, the last the parity
    /// model, all answering logits.
    pub fn start(config: ParmConfig, workers: Vec<Arc<dyn Worker>>) -> Result<Self, String> {
        if config.k < 2 {
            return Err(format!("ParM needs K >= 2 (got {})", config.k));
        }
        if workers.len() != config.k + 1 {
            return Err(format!("ParM at K = {} takes {} workers, got {}", config.k, config.k + 1, workers.len()));
        }
        if let Some((plan, _)) = &config.faults {
            plan.validate().map_err(|e| e.to_string())?;
        }
        if config.input_len == 0 || config.output_len == 0 || config.capacity == 0 || config.max_batch == 0 {
            return Err("input and output lengths, the capacity and the batch size must be at least 1".into());
        }
        let until = Instant::now() + Duration::from_secs(60);
        for rows in warm_up_sizes(config.max_batch) {
            let dispatch = Arc::new(Dispatch::new(vec![0.0; rows * config.input_len], config.input_len, Vec::new()));
            let devices: Vec<_> = workers.iter().map(|w| w.device()).collect();
            let works = Work::by_device(&dispatch, &devices, vec![None; workers.len()]);
            warm_up(&workers, works.into_iter().enumerate().collect(), until);
        }
        let (sizes, placed) = ((config.capacity, config.input_len), locations(&workers));
        let front = Front::spawn("approxifer-parm", sizes, placed, move |incoming, in_flight, live| {
            let state = Loop {
                faults: config.faults.clone().map(|(plan, seed)| (plan, StdRng::seed_from_u64(seed))),
                served: vec![0; workers.len()],
                lag: Lag::new(workers.len()),
                batcher: Batcher::new(config.max_batch * config.k, config.max_queue_delay),
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
        Ok(Parm { front })
    }

    pub fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        self.front.submit(query)
    }

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

    pub fn in_flight(&self) -> usize {
        self.front.in_flight()
    }

    /// The counts so far (no timelines).
    pub fn stats(&self) -> Stats {
        self.front.stats()
    }

    pub fn shutdown(mut self) -> Stats {
        self.front.stop()
    }
}

/// A batch in flight.
struct Pending {
    /// Per query, until answered.
    replies: Vec<Option<Sender<Result<Answer, ServeError>>>>,
    /// Per worker, its answer's rows once in, one per group (data worker `i`: member `i`).
    answers: Vec<Option<Vec<f32>>>,
    groups: usize,
    deadline: Instant,
    requests: Vec<u64>,
    cancel: Cancel,
    /// Its queries' abandonment flags ([`front::abandonments`]): all set, it is cancelled.
    abandonments: Vec<Cancel>,
}

struct Loop {
    config: ParmConfig,
    workers: Vec<Arc<dyn Worker>>,
    in_flight: Arc<AtomicUsize>,
    live: LiveStats,
    faults: Option<(FaultPlan, StdRng)>,
    served: Vec<u64>,
    /// What each worker is running, for its service times.
    lag: Lag,
    batcher: Batcher,
    pending: HashMap<u64, Pending>,
    /// Request id -> (batch, worker).
    routes: HashMap<u64, (u64, usize)>,
    next_batch: u64,
    next_request: u64,
    replies: (Sender<Response>, Receiver<Response>),
    stats: Stats,
}

/// Softmax of one row of logits.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

impl Loop {
    fn run(mut self, mut incoming: Receiver<Submission>) -> Stats {
        let mut open = true;
        let replies = self.replies.1.clone();
        loop {
            let now = Instant::now();
            let timers = self.pending.values().map(|p| p.deadline).min();
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
            self.expire(now);
            self.live.publish(&self.stats);
            if !open && self.batcher.is_empty() && self.pending.is_empty() {
                return self.stats;
            }
        }
    }

    fn dispatch(&mut self, submissions: Vec<Submission>) {
        let (k, d) = (self.config.k, self.config.input_len);
        let abandonments = front::abandonments(&submissions);
        let id = self.next_batch;
        self.next_batch += 1;
        self.stats.batches += 1;
        self.stats.groups += submissions.len().div_ceil(k) as u64;
        let count = submissions.len();
        let groups = count.div_ceil(k);
        // Data worker i: member i of every group; the parity: each group's sum.
        let mut inputs: Vec<Vec<f32>> = (0..=k).map(|_| Vec::with_capacity(groups * d)).collect();
        let mut sums = vec![0.0f32; groups * d];
        let mut replies = Vec::with_capacity(count);
        for (q, submission) in submissions.into_iter().enumerate() {
            inputs[q % k].extend_from_slice(&submission.query);
            let sum = &mut sums[q / k * d..(q / k + 1) * d];
            sum.iter_mut().zip(&submission.query).for_each(|(s, v)| *s += v);
            replies.push(Some(submission.reply));
        }
        // The last group's missing members are zero queries (they add nothing to its sum).
        for q in count..groups * k {
            inputs[q % k].extend(std::iter::repeat_n(0.0, d));
        }
        inputs[k] = sums;
        let mut pending = Pending {
            replies,
            answers: vec![None; k + 1],
            groups,
            deadline: Instant::now() + self.config.deadline,
            requests: Vec::new(),
            cancel: Cancel::default(),
            abandonments,
        };
        // One dispatch, one draw: a random slowdown strikes one of its workers, as for the
        // coordinator's groups.
        let serving: Vec<(usize, u64)> = (0..=k).map(|w| (w, self.served[w])).collect();
        let mut fates = match &mut self.faults {
            Some((plan, rng)) => plan.draw(&serving, rng).into_iter().map(Some).collect(),
            None => vec![None; k + 1],
        };
        for (w, input) in inputs.into_iter().enumerate() {
            let dispatch = Arc::new(Dispatch::new(input, d, Vec::new()));
            let device = self.workers[w].device();
            let Some(work) = Work::by_device(&dispatch, &[device], vec![None]).pop() else { continue };
            let injected = fates[w].take();
            let request_id = self.next_request;
            self.next_request += 1;
            self.served[w] += 1;
            let request = Request { id: request_id, work, injected, cancel: pending.cancel.clone() };
            if self.workers[w].submit(request, &self.replies.0).is_ok() {
                pending.requests.push(request_id);
                self.routes.insert(request_id, (id, w));
                self.lag.sent(w, request_id, Instant::now());
                self.stats.sent(w);
            }
        }
        self.pending.insert(id, pending);
        self.settle(id);
    }

    fn receive(&mut self, response: Response) {
        let busy = self.lag.answered(response.worker, response.id, Instant::now());
        let route = self.routes.remove(&response.id);
        // A worker that could not answer is a straggler the parity covers.
        let Some(output) = response.output else { return };
        let pending = route.and_then(|(id, _)| self.pending.get_mut(&id));
        self.stats.answered(response.worker, busy, pending.is_none());
        let (Some((id, w)), Some(pending)) = (route, pending) else { return };
        let c = self.config.output_len;
        if output.len() != pending.groups * c {
            return; // a malformed answer is a missing one
        }
        pending.answers[w] = Some(output);
        self.settle(id);
    }

    /// Answers every query of batch `id` whose prediction is now known: its data worker's, or
    /// rebuilt from the parity and the group's other members.
    fn settle(&mut self, id: u64) {
        let (k, c) = (self.config.k, self.config.output_len);
        let Some(mut pending) = self.pending.remove(&id) else { return };
        let mut ready = Vec::new();
        for q in 0..pending.replies.len() {
            if pending.replies[q].is_none() {
                continue;
            }
            let (group, member) = (q / k, q % k);
            let row = |w: usize, g: usize| pending.answers[w].as_ref().map(|a| &a[g * c..(g + 1) * c]);
            if let Some(logits) = row(member, group) {
                ready.push((q, softmax(logits), false));
                continue;
            }
            // Missing: rebuilt when it is the group's only missing member and the parity is in.
            let Some(parity) = row(k, group) else { continue };
            let others: Option<Vec<&[f32]>> = (0..k).filter(|&i| i != member).map(|i| row(i, group)).collect();
            if let Some(others) = others {
                ready.push((q, softmax(&crate::parm::reconstruct(parity, &others)), true));
            }
        }
        for (q, output, approximate) in ready {
            if let Some(reply) = pending.replies[q].take() {
                self.stats.decoded_groups += 1;
                self.answer(reply, Ok(Answer { output, approximate }));
            }
        }
        if pending.replies.iter().all(Option::is_none) {
            pending.cancel.cancel();
            self.forget(&pending.requests);
        } else {
            self.pending.insert(id, pending);
        }
    }

    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(&id, _)| id).collect();
        for id in expired {
            let pending = self.pending.remove(&id).expect("listed as pending");
            pending.cancel.cancel();
            self.forget(&pending.requests);
            let answered = pending.answers.iter().filter(|a| a.is_some()).count();
            let error = ServeError::DeadlineMissed {
                answered,
                needed: self.config.k,
                deadline_ms: self.config.deadline.as_millis(),
            };
            for reply in pending.replies.into_iter().flatten() {
                self.stats.failed_groups += 1;
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
            for reply in pending.replies.into_iter().flatten() {
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

#[cfg(test)]
mod tests {
    #[test]
    fn softmax_is_a_distribution_in_the_logits_order() {
        let p = super::softmax(&[1.0, 3.0, 2.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[2] && p[2] > p[0]);
        // Large logits do not overflow.
        assert!(super::softmax(&[1000.0, 0.0]).iter().all(|v| v.is_finite()));
    }
}
