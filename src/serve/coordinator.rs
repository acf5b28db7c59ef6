//! The coordinator: groups queries, codes them, sends the coded queries to `N` workers,
//! decodes from the first `N - S` answers, and answers every accepted query exactly once.
//!
//! One thread owns all state (the group being formed, the groups in flight), woken by a new
//! query, a worker's answer, or the next timer (a partial group's maximum wait, a group's
//! deadline); nothing is shared but the in-flight count that bounds admission.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::faults::FaultPlan;
use super::front::{Front, Submission, answer};
use super::worker::{Cancel, Request, Response, Worker};
use crate::kernels::gpu::GpuCodec;
use crate::kernels::{Code, Locator, cpu, locate};

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub code: Code,
    /// Values per query (`D`) and per prediction (`C`).
    pub input_len: usize,
    pub output_len: usize,
    /// A group with fewer than `K` queries is padded and sent this long after its first query.
    pub max_wait: Duration,
    /// A group not decodable this long after dispatch fails, every query with an error.
    pub deadline: Duration,
    /// The most queries accepted and not yet answered; beyond it, [`ServeError::Overloaded`].
    pub capacity: usize,
    /// Fault injection: the plan every dispatch draws from, and its seed.
    pub faults: Option<(FaultPlan, u64)>,
    /// Where groups are encoded and decoded.
    pub codec: Codec,
    /// This long after dispatch, re-send a group's unanswered coded queries to workers that
    /// have already answered for it (every worker runs the same model, so any of them can
    /// serve any coded query): a straggler beyond the `S` the code absorbs then costs this
    /// delay and one more service time, not its whole lateness. `None`: never.
    pub hedge_after: Option<Duration>,
    /// How a group's liars are found when the code has `A > 0` (and `N >= 2K + 2A + S - 1`):
    /// they are removed before decoding, on the CPU, whichever the codec.
    pub locator: Locator,
}

/// Where the coordinator encodes and decodes its groups. Both give the same results (the GPU
/// kernels are tested against the CPU ones).
#[derive(Clone, Debug, Default)]
pub enum Codec {
    /// The CPU reference kernels. A group is `K` queries, a few kilobytes: coding it takes
    /// microseconds, less than one round trip to a device.
    #[default]
    Cpu,
    /// The WGSL kernels on a device, for large queries or to keep the CPU free.
    Gpu(Arc<GpuCodec>),
}

impl Codec {
    fn encode(&self, code: &Code, queries: &[f32], d: usize) -> Result<Vec<f32>, String> {
        match self {
            Codec::Cpu => cpu::encode_to_vec(code, queries, d).map_err(|e| e.to_string()),
            Codec::Gpu(gpu) => gpu.encode(code, queries, d).map_err(|e| e.to_string()),
        }
    }

    fn decode(&self, code: &Code, outputs: &[f32], c: usize, mask: &[bool]) -> Result<Vec<f32>, String> {
        match self {
            Codec::Cpu => cpu::decode_to_vec(code, outputs, c, mask).map_err(|e| e.to_string()),
            Codec::Gpu(gpu) => gpu.decode(code, outputs, c, mask).map_err(|e| e.to_string()),
        }
    }
}

/// A prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub output: Vec<f32>,
    /// Decoded from other workers' answers, not computed on this query itself.
    pub approximate: bool,
}

/// Why a query got no prediction. Every accepted query gets exactly one answer or one of these.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
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
    #[error("decoding failed: {0}")]
    Decode(String),
}

/// Where a query's answer arrives: exactly one message.
pub type Ticket = Receiver<Result<Answer, ServeError>>;

/// What happened over a coordinator's life.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub groups: u64,
    pub decoded_groups: u64,
    pub failed_groups: u64,
    pub answered: u64,
    pub errors: u64,
    /// Worker answers that came after their group was decoded or failed.
    pub late_responses: u64,
    /// Coded queries re-sent to another worker (see [`CoordinatorConfig::hedge_after`]).
    pub hedged_requests: u64,
    /// Answers holding NaN or infinity: dropped on arrival, as if never given.
    pub non_finite_answers: u64,
    /// Workers the locator removed from decoded groups (codes with `A > 0`).
    pub located_workers: u64,
}

/// A running coordinator. Dropping it shuts it down gracefully (see [`Coordinator::shutdown`]).
pub struct Coordinator {
    front: Front,
}

impl Coordinator {
    /// Starts a coordinator over `workers` (one per coded query: exactly `N`).
    pub fn start(config: CoordinatorConfig, workers: Vec<Arc<dyn Worker>>) -> Result<Self, String> {
        let n = config.code.params().workers();
        if workers.len() != n {
            return Err(format!("{} workers for a code with N = {n}", workers.len()));
        }
        if config.input_len == 0 || config.output_len == 0 || config.capacity == 0 {
            return Err("input and output lengths and the capacity must be at least 1".into());
        }
        if let Some((plan, _)) = &config.faults {
            plan.validate().map_err(|e| e.to_string())?;
        }
        let erasure = config.code.erasure_code().map_err(|e| e.to_string())?;
        let (capacity, input_len) = (config.capacity, config.input_len);
        let front = Front::spawn("approxifer-coordinator", capacity, input_len, move |incoming, in_flight| {
            Loop::new(config, erasure, workers, in_flight).run(incoming)
        })?;
        Ok(Coordinator { front })
    }

    /// Accepts `query` (or refuses it at once, with nothing queued); its answer arrives on the
    /// returned ticket.
    pub fn submit(&self, query: Vec<f32>) -> Result<Ticket, ServeError> {
        self.front.submit(query)
    }

    /// Accepts all of `queries` or none of them (see [`Coordinator::submit`]).
    pub fn submit_all(&self, queries: Vec<Vec<f32>>) -> Result<Vec<Ticket>, ServeError> {
        self.front.submit_all(queries)
    }

    /// Queries accepted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.front.in_flight()
    }

    /// Stops accepting queries, sends the group being formed, waits for every group in flight
    /// to be decoded or to reach its deadline, and returns the books.
    pub fn shutdown(mut self) -> Stats {
        self.front.stop()
    }
}

/// A group in flight.
struct Group {
    /// One per query slot; `None` for padding.
    replies: Vec<Option<Sender<Result<Answer, ServeError>>>>,
    /// One per coded query (worker `j` is sent coded query `j`), filled as answers arrive.
    outputs: Vec<Option<Vec<f32>>>,
    answered: usize,
    deadline: Instant,
    /// The coded queries, kept until the hedge is sent.
    coded: Option<Vec<Arc<[f32]>>>,
    hedge_at: Option<Instant>,
    /// Cancels the group's requests not yet started once it is decoded or has failed.
    cancel: Cancel,
}

/// The coordinator thread's state.
struct Loop {
    config: CoordinatorConfig,
    /// What groups are decoded with once located workers are removed (the code itself when
    /// `A = 0`): built once, not per group.
    erasure: Code,
    workers: Vec<Arc<dyn Worker>>,
    in_flight: Arc<AtomicUsize>,
    direct: Vec<Vec<usize>>,
    faults: Option<(FaultPlan, StdRng)>,
    served: Vec<u64>,
    forming: Vec<Submission>,
    forming_since: Option<Instant>,
    pending: HashMap<u64, Group>,
    next_group: u64,
    replies: (Sender<Response>, Receiver<Response>),
    stats: Stats,
}

impl Loop {
    fn new(
        config: CoordinatorConfig,
        erasure: Code,
        workers: Vec<Arc<dyn Worker>>,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        let n = workers.len();
        Loop {
            erasure,
            direct: config.code.direct_workers(),
            faults: config.faults.clone().map(|(plan, seed)| (plan, StdRng::seed_from_u64(seed))),
            served: vec![0; n],
            forming: Vec::new(),
            forming_since: None,
            pending: HashMap::new(),
            next_group: 0,
            replies: crossbeam_channel::unbounded(),
            stats: Stats::default(),
            config,
            workers,
            in_flight,
        }
    }

    fn run(mut self, mut incoming: Receiver<Submission>) -> Stats {
        let k = self.config.code.params().queries();
        let mut open = true;
        let replies = self.replies.1.clone();
        loop {
            let now = Instant::now();
            let wake = [
                self.forming_since.map(|t| t + self.config.max_wait),
                self.pending.values().flat_map(|g| [Some(g.deadline), g.hedge_at]).flatten().min(),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = wake.map_or(Duration::from_secs(3600), |t| t.saturating_duration_since(now));
            select! {
                recv(incoming) -> message => match message {
                    Ok(submission) => {
                        self.forming_since.get_or_insert_with(Instant::now);
                        self.forming.push(submission);
                        if self.forming.len() == k {
                            self.dispatch();
                        }
                    }
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
            if !self.forming.is_empty()
                && (!open || self.forming_since.is_some_and(|t| now >= t + self.config.max_wait))
            {
                self.dispatch();
            }
            self.hedge(now);
            self.expire(now);
            if !open && self.forming.is_empty() && self.pending.is_empty() {
                return self.stats;
            }
        }
    }

    /// Codes the forming group (padded to `K`) and sends one coded query to each worker.
    fn dispatch(&mut self) {
        let params = *self.config.code.params();
        let (k, n, d) = (params.queries(), params.workers(), self.config.input_len);
        let submissions = std::mem::take(&mut self.forming);
        self.forming_since = None;
        let mut queries = vec![0.0f32; k * d];
        let mut replies = Vec::with_capacity(k);
        for (slot, submission) in submissions.into_iter().enumerate() {
            queries[slot * d..(slot + 1) * d].copy_from_slice(&submission.query);
            replies.push(Some(submission.reply));
        }
        replies.resize_with(k, || None);
        let group = self.next_group;
        self.next_group += 1;
        self.stats.groups += 1;
        let coded = match self.config.codec.encode(&self.config.code, &queries, d) {
            Ok(coded) => coded,
            Err(e) => return self.fail(replies, ServeError::Decode(e)),
        };
        let fates = match &mut self.faults {
            Some((plan, rng)) => {
                let serving: Vec<(usize, u64)> = self.served.iter().copied().enumerate().collect();
                plan.draw(&serving, rng).into_iter().map(Some).collect()
            }
            None => vec![None; n],
        };
        let cancel = Cancel::default();
        let rows: Vec<Arc<[f32]>> = coded.chunks_exact(d).map(Arc::from).collect();
        let mut taken = 0;
        for (w, (row, injected)) in rows.iter().zip(fates).enumerate() {
            self.served[w] += 1;
            let request =
                Request { id: group * n as u64 + w as u64, input: row.clone(), injected, cancel: cancel.clone() };
            taken += usize::from(self.workers[w].submit(request, &self.replies.0).is_ok());
        }
        let needed = params.min_responders();
        if taken < needed {
            cancel.cancel();
            return self.fail(replies, ServeError::WorkersUnavailable { available: taken, needed });
        }
        let now = Instant::now();
        let hedge_at = self.config.hedge_after.map(|after| now + after);
        let group_state = Group {
            replies,
            outputs: vec![None; n],
            answered: 0,
            deadline: now + self.config.deadline,
            coded: hedge_at.map(|_| rows),
            hedge_at,
            cancel,
        };
        self.pending.insert(group, group_state);
    }

    /// Takes a worker's answer; decodes its group once `N - S` have answered.
    fn receive(&mut self, response: Response) {
        let n = self.workers.len() as u64;
        // The id names the coded query, whichever worker ran it (a hedge runs it elsewhere).
        let (group_id, row) = (response.id / n, (response.id % n) as usize);
        let Some(group) = self.pending.get_mut(&group_id) else {
            self.stats.late_responses += 1;
            return;
        };
        // A wrong-sized answer cannot be decoded: it counts as no answer.
        if response.output.len() != self.config.output_len || group.outputs[row].is_some() {
            return;
        }
        // Nor can a NaN or an infinity: known bad, it is erased rather than spending the
        // locator's budget, and the group waits for another answer (or a hedge).
        if response.output.iter().any(|v| !v.is_finite()) {
            self.stats.non_finite_answers += 1;
            return;
        }
        group.outputs[row] = Some(response.output);
        group.answered += 1;
        if group.answered == self.config.code.params().min_responders() {
            let group = self.pending.remove(&group_id).expect("the group is pending");
            self.decode(group);
        }
    }

    fn decode(&mut self, group: Group) {
        group.cancel.cancel();
        let (c, n) = (self.config.output_len, self.workers.len());
        let mut mask: Vec<bool> = group.outputs.iter().map(Option::is_some).collect();
        let mut outputs = vec![0.0f32; n * c];
        for (w, output) in group.outputs.iter().enumerate() {
            if let Some(output) = output {
                outputs[w * c..(w + 1) * c].copy_from_slice(output);
            }
        }
        // Byzantine codes: remove the located liars, then decode the rest as stragglers.
        let mut located = Vec::new();
        if self.config.code.params().byzantine() > 0 {
            match locate(&self.config.code, self.config.locator, &outputs, c, &mask) {
                Ok(location) => {
                    mask = location.masks;
                    located = location.located.into_iter().flatten().collect();
                }
                Err(e) => return self.fail(group.replies, ServeError::Decode(e.to_string())),
            }
        }
        match self.config.codec.decode(&self.erasure, &outputs, c, &mask) {
            Ok(decoded) => {
                self.stats.decoded_groups += 1;
                self.stats.located_workers += located.len() as u64;
                for (j, reply) in group.replies.into_iter().enumerate() {
                    let approximate = !self.direct[j].iter().any(|&w| mask[w]);
                    let answer = Answer { output: decoded[j * c..(j + 1) * c].to_vec(), approximate };
                    self.answer(reply, Ok(answer));
                }
            }
            Err(e) => self.fail(group.replies, ServeError::Decode(e)),
        }
    }

    /// Re-sends, for every group whose hedge time has come, each of its unanswered coded
    /// queries to a worker that has answered for it (round robin over them). Sending only as
    /// many as the group still needs measured a worse tail (serve-bench at 200 q/s, 10k
    /// queries: p99.9 - p50 21.7 against 19.6 ms) for no saving: the copies not needed are
    /// cancelled when the group decodes (worker-seconds 106.5 against 106.3).
    fn hedge(&mut self, now: Instant) {
        let n = self.workers.len();
        let due: Vec<u64> =
            self.pending.iter().filter(|(_, g)| g.hedge_at.is_some_and(|t| t <= now)).map(|(&id, _)| id).collect();
        for id in due {
            let Some(group) = self.pending.get_mut(&id) else { continue };
            group.hedge_at = None;
            let Some(rows) = group.coded.take() else { continue };
            let helpers: Vec<usize> = (0..n).filter(|&w| group.outputs[w].is_some()).collect();
            let missing: Vec<usize> = (0..n).filter(|&j| group.outputs[j].is_none()).collect();
            if helpers.is_empty() {
                continue;
            }
            let cancel = group.cancel.clone();
            for (i, j) in missing.into_iter().enumerate() {
                let w = helpers[i % helpers.len()];
                let injected = match &mut self.faults {
                    Some((plan, rng)) => plan.draw(&[(w, self.served[w])], rng).pop(),
                    None => None,
                };
                self.served[w] += 1;
                let request =
                    Request { id: id * n as u64 + j as u64, input: rows[j].clone(), injected, cancel: cancel.clone() };
                if self.workers[w].submit(request, &self.replies.0).is_ok() {
                    self.stats.hedged_requests += 1;
                }
            }
        }
    }

    /// Fails every group whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self.pending.iter().filter(|(_, g)| g.deadline <= now).map(|(&id, _)| id).collect();
        let needed = self.config.code.params().min_responders();
        for id in expired {
            let group = self.pending.remove(&id).expect("listed as pending");
            group.cancel.cancel();
            let error = ServeError::DeadlineMissed {
                answered: group.answered,
                needed,
                deadline_ms: self.config.deadline.as_millis(),
            };
            self.fail(group.replies, error);
        }
    }

    fn fail(&mut self, replies: Vec<Option<Sender<Result<Answer, ServeError>>>>, error: ServeError) {
        self.stats.failed_groups += 1;
        for reply in replies {
            self.answer(reply, Err(error.clone()));
        }
    }

    /// Sends one query's result (padding slots have none) and releases its admission slot.
    fn answer(&mut self, reply: Option<Sender<Result<Answer, ServeError>>>, result: Result<Answer, ServeError>) {
        if let Some(reply) = reply {
            answer(&self.in_flight, &mut self.stats, reply, result);
        }
    }
}
