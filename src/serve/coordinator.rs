//! The coordinator: gathers queries into batches of groups (Triton's dynamic batcher), codes
//! each batch for the `N` workers, sends every worker its rows of the batch in one request,
//! decodes each group from the first answers that suffice, and answers every accepted query
//! exactly once.
//!
//! A batch holds up to `max_batch` full groups of `K` queries; when the delay closes it with
//! `K' < K` queries left over, those form one group coded for `K'` queries (`N' =` what `K'`
//! and the same `S`, `A` and `T` need, on a rotating subset of the workers), never padded; with
//! liars (`A > 0`) each such code has a locator of its own ([`super::locating`]), and every
//! batch's workers are placed on its codes' nodes at random, so that a liar is judged against
//! the others wherever it served ([`super::reputation`]). Workers
//! form their coded queries on their own device ([`super::batch`]); the coordinator itself
//! only sees raw queries and predictions.
//!
//! One thread owns all state (the batch being formed, the batches in flight), woken by a new
//! query, a worker's answer, or the next timer (the batch's queue delay, a batch's hedge or
//! deadline); nothing is shared but the in-flight count that bounds admission.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::answer::{Answer, CodingError, LiveStats, ServeError, Stats, Ticket};
use super::batch::{Coding, Dispatch, Part, Segment, Work};
use super::faults::FaultPlan;
use super::front::{self, Batcher, Front, Submission, answer, locations};
use super::lag::Lag;
use super::locating::{Learning, LocatorState, OnlineLocator};
use super::trace::{BatchEvent, BatchTrace, keep_slowest};
use super::worker::{Cancel, Request, Response, Worker, warm_up, warm_up_sizes};
use crate::kernels::gpu::GpuCodec;
use crate::kernels::privacy::MaskSampler;
use crate::kernels::{Calibration, Code, Location, Locator, cpu, locate};

/// How the coordinator runs.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub code: Code,
    /// Values per query (`D`) and per prediction (`C`).
    pub input_len: usize,
    pub output_len: usize,
    /// The most groups of `K` queries in one batch (one request per worker).
    pub max_batch: usize,
    /// A batch that is not full is sent this long after its oldest query arrived.
    pub max_queue_delay: Duration,
    /// A batch not decodable this long after dispatch fails, every query with an error.
    pub deadline: Duration,
    /// The most queries accepted and not yet answered; beyond it, [`ServeError::Overloaded`].
    pub capacity: usize,
    /// Fault injection: the plan every dispatch draws from, and its seed.
    pub faults: Option<(FaultPlan, u64)>,
    /// Where batches are decoded (workers encode on their own devices).
    pub codec: Codec,
    /// At least this long after dispatch, re-send a batch's unanswered coded queries to
    /// workers that have already answered it (every worker runs the same model, so any of
    /// them can serve any coded query): a straggler beyond the `S` the code absorbs then costs
    /// this delay and one more service time, not its whole lateness. The delay follows the
    /// batches: once [`HEDGE_HISTORY`] have completed, it is the larger of this and twice
    /// their median completion time, so that on a loaded device batches that are merely as
    /// slow as the others are not hedged. A worker that has been on one request for three
    /// quarters of that delay is lagging: while fewer than half the workers lag, each batch's
    /// coded queries for them also go to other workers, in their requests for that batch
    /// ([`Stats::covered_parts`]). `None`: never; neither with a private code (`T > 0`),
    /// whose guarantee allows a worker one coded query per group.
    pub hedge_after: Option<Duration>,
    /// Once a batch can be decoded (`N - S` answers per group), wait up to this fraction of
    /// the recent batches' median completion time for the rest before decoding: a group
    /// decoded from all `N` answers is a better approximation than from `N - S` (the
    /// embedded LeNet-5, `K = 4`, `N = 5`: 0.872 against 0.755 accuracy, `approxifer eval`'s
    /// normal and degraded), and a batch's answers come close together but for a straggler's,
    /// which then costs this wait. A batch still short of an answer at the end decodes from
    /// the answers it had when it became decodable. 0: decode at the `N - S`-th answer.
    pub decode_grace: f64,
    /// How a group's liars are found when the code has `A > 0` (and `N >= 2K + 2A + S - 1`):
    /// they are removed before decoding, on the CPU, whichever the codec. A calibrated locator
    /// must describe `code`; partial groups' codes start from `partial_calibrations` or,
    /// without one there, robust, and learn their own.
    pub locator: Locator,
    /// Calibrations of the codes of partial groups (`approxifer calibrate --partial`), each
    /// describing the code of some `K' < K` ([`Code::for_queries`]); a calibration that
    /// describes none is an error.
    pub partial_calibrations: Vec<Arc<Calibration>>,
    /// Learn a calibrated locator from the traffic, less the answers located (codes with
    /// `A > 0`), replacing `locator` once fitted ([`crate::serve::locating`]).
    pub learning: Option<Learning>,
    /// With a private code (`T > 0`): the masks' standard deviation, in the units of the
    /// queries. The masks come from a generator seeded by the operating system
    /// ([`MaskSampler::from_entropy`]). Ignored when `T = 0`.
    pub mask_sigma: f64,
    /// Keep the timelines of the slowest batches that took at least this long, dispatch to
    /// decoding or expiry ([`Stats::slow_batches`]); `None`: none.
    pub trace_slower_than: Option<Duration>,
}

/// How many recent batches' completion times (dispatch to decodable) set the hedge delay
/// ([`CoordinatorConfig::hedge_after`]); fewer than this and the configured delay holds.
pub const HEDGE_HISTORY: usize = 32;

/// Mixed with a fault plan's seed to seed the placement of workers on nodes (codes with
/// liars), so that a benchmark's run repeats.
const PLACEMENT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The default [`CoordinatorConfig::decode_grace`]: a quarter of the median completion time
/// (measured in README, "Decoding from every answer").
pub const DEFAULT_DECODE_GRACE: f64 = 0.25;

/// A batch is hedged once it has taken this many times the recent batches' median completion
/// time: late, not merely as slow as the others. The median, not a high percentile: the late
/// batches are in the history too, and with a 95th percentile two of them among 32 set the
/// next delay, which made the next late batches later (measured at 600 q/s, 20,000 queries:
/// p99.9 - p50 25-26 ms against 20 with the median).
const HEDGE_MARGIN: f64 = 2.0;

/// A worker is lagging once it has been on one request for this fraction of the hedge delay
/// ([`CoordinatorConfig::hedge_after`]): a healthy one answers within about one median
/// completion time (half the delay), a straggler takes many.
const LAG_FRACTION: f64 = 0.75;

/// Where the coordinator decodes its batches. Both give the same results (the GPU kernels are
/// tested against the CPU ones).
#[derive(Clone, Debug, Default)]
pub enum Codec {
    /// The CPU reference kernels: a batch's predictions are a few kilobytes, decoded in
    /// microseconds, less than one round trip to a device.
    #[default]
    Cpu,
    /// The WGSL kernels on a device, for large outputs or to keep the CPU free.
    Gpu(Arc<GpuCodec>),
}

impl Codec {
    /// Decodes `outputs` (`[B, N, C]`) with `masks` (`B x N`) into `[B, K, C]`.
    fn decode(&self, code: &Code, outputs: &[f32], c: usize, masks: &[bool]) -> Result<Vec<f32>, CodingError> {
        Ok(match self {
            Codec::Cpu => cpu::decode_to_vec(code, outputs, c, masks)?,
            Codec::Gpu(gpu) => gpu.decode(code, outputs, c, masks)?,
        })
    }
}

/// A running coordinator. Dropping it shuts it down gracefully (see [`Coordinator::shutdown`]).
pub struct Coordinator {
    front: Front,
    locating: Arc<OnlineLocator>,
}

impl Coordinator {
    /// Starts a coordinator over `workers` (one per coded query of a full group: exactly `N`).
    pub fn start(config: CoordinatorConfig, workers: Vec<Arc<dyn Worker>>) -> Result<Self, String> {
        let n = config.code.params().workers();
        if workers.len() != n {
            return Err(format!("{} workers for a code with N = {n}", workers.len()));
        }
        if config.input_len == 0 || config.output_len == 0 || config.capacity == 0 || config.max_batch == 0 {
            return Err("input and output lengths, the capacity and the batch size must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&config.decode_grace) {
            return Err(format!(
                "the decode grace is a fraction of the median completion time, in [0, 1], not {}",
                config.decode_grace
            ));
        }
        if let Some((plan, _)) = &config.faults {
            plan.validate().map_err(|e| e.to_string())?;
        }
        let full = Arc::new(Coding::new(config.code.clone()).map_err(|e| e.to_string())?);
        let masks = match config.code.params().privacy() {
            0 => None,
            _ => Some(MaskSampler::from_entropy(config.mask_sigma).map_err(|e| e.to_string())?),
        };
        let learning = config.learning.clone().filter(|_| config.code.params().byzantine() > 0);
        let locating = Arc::new(OnlineLocator::start(
            &config.code,
            config.output_len,
            (config.locator.clone(), &config.partial_calibrations),
            learning,
        )?);
        let (sizes, placed) = ((config.capacity, config.input_len), locations(&workers));
        let (ready, warm) = crossbeam_channel::bounded(1);
        let looped = locating.clone();
        let front = Front::spawn("approxifer-coordinator", sizes, placed, move |incoming, in_flight, live| {
            let mut state = Loop::new(config, full, workers, (in_flight, live), looped, masks);
            state.warm_up();
            let _ = ready.send(());
            state.run(incoming)
        })?;
        // Returns once the workers' devices are warm, so that no query waits for it.
        let _ = warm.recv();
        Ok(Coordinator { front, locating })
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

    /// The Byzantine locator in use, and what it has learnt.
    pub fn locator_state(&self) -> LocatorState {
        self.locating.state()
    }

    /// The code's `A`: liars per group it removes.
    pub fn byzantine(&self) -> usize {
        self.locating.byzantine()
    }

    /// Stops accepting queries, sends the batch being formed, waits for every batch in flight
    /// to be decoded or to reach its deadline, and returns the books.
    pub fn shutdown(mut self) -> Stats {
        self.front.stop()
    }
}

/// One segment of a batch in flight (see [`Segment`]).
struct SegmentState {
    /// Node `i` of the segment's code is served by worker `workers[i]`.
    workers: Vec<usize>,
    /// Per node, once answered: its rows for the segment's groups, `[groups, C]`.
    outputs: Vec<Option<Vec<f32>>>,
    /// Per node, the worker whose answer `outputs` holds (another than `workers`' after a
    /// hedge or a cover).
    answered_by: Vec<Option<usize>>,
    /// `(node, group, worker)`: a row that `worker`'s answer filled in where the node's first
    /// answer had a NaN or an infinity. It is that worker's, for the rules about liars.
    filled_by: Vec<(usize, usize, usize)>,
    /// Requests for its nodes that their worker said it could not answer.
    failed: usize,
}

impl SegmentState {
    fn new(workers: Vec<usize>) -> Self {
        let nodes = workers.len();
        SegmentState {
            workers,
            outputs: vec![None; nodes],
            answered_by: vec![None; nodes],
            filled_by: Vec::new(),
            failed: 0,
        }
    }

    /// Per node, the worker that answered it, or the one it was sent to.
    fn served_by(&self) -> Vec<usize> {
        self.workers.iter().zip(&self.answered_by).map(|(&sent, by)| by.unwrap_or(sent)).collect()
    }

    /// Per group and node (`[groups, N]`), whose answer its row is: [`served_by`]'s, or the
    /// worker whose answer filled it in.
    fn placement(&self, groups: usize) -> Vec<usize> {
        let n = self.workers.len();
        let mut placement = self.served_by().repeat(groups);
        for &(node, g, worker) in &self.filled_by {
            if let Some(at) = placement.get_mut(g * n + node) {
                *at = worker;
            }
        }
        placement
    }

    /// Whose answer node `node`'s row of group `g` is, if it has one.
    fn answered_row(&self, node: usize, g: usize) -> Option<usize> {
        let filled = self.filled_by.iter().find(|&&(at, group, _)| (at, group) == (node, g));
        filled.map(|&(_, _, worker)| worker).or(self.answered_by[node])
    }

    /// Nodes whose answer for group `g` (of `c` values) holds only numbers.
    fn finite_answers(&self, g: usize, c: usize) -> usize {
        self.outputs.iter().flatten().filter(|rows| finite(&rows[g * c..(g + 1) * c])).count()
    }

    /// Finite answers for group `g` that count towards decoding it with a code that removes
    /// `byzantine` liars: a worker that answered several nodes (a hedge's copy) loses all of
    /// them if located ([`remove_their_other_answers`]), so the `byzantine` workers holding
    /// the most answers count once each.
    fn usable_answers(&self, g: usize, c: usize, byzantine: usize) -> usize {
        let mut per_worker: HashMap<usize, usize> = HashMap::new();
        for (node, rows) in self.outputs.iter().enumerate() {
            if let (Some(rows), Some(by)) = (rows, self.answered_row(node, g))
                && finite(&rows[g * c..(g + 1) * c])
            {
                *per_worker.entry(by).or_default() += 1;
            }
        }
        let answers: usize = per_worker.values().sum();
        let mut held: Vec<usize> = per_worker.into_values().collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        answers - held.iter().take(byzantine).map(|&h| h - 1).sum::<usize>()
    }
}

/// How a dispatch's queries are coded ([`Loop::layout`]).
struct BatchLayout {
    segments: Vec<Segment>,
    states: Vec<SegmentState>,
    /// Per worker, its parts in row order (empty: not in this dispatch).
    parts: Vec<Vec<Part>>,
}

/// An outstanding request: its batch, its worker, and the parts its answer's rows hold.
struct Route {
    batch: u64,
    worker: usize,
    parts: Vec<Part>,
}

/// A batch in flight.
struct Batch {
    dispatch: Arc<Dispatch>,
    /// One per query of the dispatch, in order.
    replies: Vec<Option<Sender<Result<Answer, ServeError>>>>,
    segments: Vec<SegmentState>,
    /// Workers that have answered: where hedges go.
    answered: Vec<bool>,
    /// The requests sent for this batch (their routes are dropped with it).
    requests: Vec<u64>,
    deadline: Instant,
    dispatched: Instant,
    hedge: Hedge,
    /// Once decodable: when it is decoded if the rest of its answers have not come
    /// ([`CoordinatorConfig::decode_grace`]), and per segment which nodes had answered then.
    decode_at: Option<(Instant, Vec<Vec<bool>>)>,
    /// Its timeline, when slow batches are traced.
    trace: Option<BatchTrace>,
    /// Cancels the batch's requests not yet started once it is decoded or has failed.
    cancel: Cancel,
    /// Its queries' abandonment flags ([`front::abandonments`]): all set, it is cancelled.
    abandonments: Vec<Cancel>,
}

impl Batch {
    /// Adds `event` to the batch's timeline, if it keeps one.
    fn note(&mut self, event: BatchEvent) {
        if let Some(trace) = &mut self.trace {
            trace.events.push((self.dispatched.elapsed(), event));
        }
    }
}

/// When a batch's unanswered coded queries are re-sent ([`Loop::hedge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hedge {
    /// Not: hedging is off.
    Never,
    At(Instant),
    /// Due, but every worker that answered the batch had a request outstanding: it goes to the
    /// first of them to have none (looked at after every answer).
    WhenIdle,
}

impl Hedge {
    fn after(delay: Option<Duration>, now: Instant) -> Hedge {
        delay.map_or(Hedge::Never, |after| Hedge::At(now + after))
    }

    /// The time to wake up for it, if any.
    fn timer(self) -> Option<Instant> {
        match self {
            Hedge::At(at) => Some(at),
            Hedge::Never | Hedge::WhenIdle => None,
        }
    }

    fn is_due(self, now: Instant) -> bool {
        match self {
            Hedge::At(at) => at <= now,
            Hedge::WhenIdle => true,
            Hedge::Never => false,
        }
    }
}

/// The coordinator thread's state.
struct Loop {
    config: CoordinatorConfig,
    /// The code of full groups, and of partial ones by their `K'` (built once each).
    codings: HashMap<usize, Arc<Coding>>,
    workers: Vec<Arc<dyn Worker>>,
    in_flight: Arc<AtomicUsize>,
    live: LiveStats,
    faults: Option<(FaultPlan, StdRng)>,
    /// Requests each worker has been sent (for crash-after faults).
    served: Vec<u64>,
    /// How long each worker has been on its current request (for covering lagging workers).
    lag: Lag,
    batcher: Batcher,
    /// Where partial groups' nodes start, rotating so that their work spreads over the workers.
    rotation: usize,
    /// With liars tolerated (`A > 0`), every batch's workers are placed on the code's nodes
    /// at random: a worker then serves every position, so what is learnt of a position is
    /// not one liar's, and a liar's answers can be told from the others' over many batches
    /// ([`super::reputation`]).
    placement: StdRng,
    pending: HashMap<u64, Batch>,
    /// Request id -> where it went and what its answer holds: the requests outstanding.
    routes: HashMap<u64, Route>,
    next_batch: u64,
    next_request: u64,
    replies: (Sender<Response>, Receiver<Response>),
    /// The last [`HEDGE_HISTORY`] batches' completion times, oldest first.
    completions: VecDeque<Duration>,
    stats: Stats,
    locating: Arc<OnlineLocator>,
    /// A private code's mask generator (`None` when `T = 0`).
    masks: Option<MaskSampler>,
}

impl Loop {
    fn new(
        config: CoordinatorConfig,
        full: Arc<Coding>,
        workers: Vec<Arc<dyn Worker>>,
        (in_flight, live): (Arc<AtomicUsize>, LiveStats),
        locating: Arc<OnlineLocator>,
        masks: Option<MaskSampler>,
    ) -> Self {
        let n = workers.len();
        let k = config.code.params().queries();
        Loop {
            codings: HashMap::from([(k, full)]),
            faults: config.faults.clone().map(|(plan, seed)| (plan, StdRng::seed_from_u64(seed))),
            served: vec![0; n],
            lag: Lag::new(n),
            batcher: Batcher::new(config.max_batch.saturating_mul(k), config.max_queue_delay),
            rotation: 0,
            // Unpredictable to the workers, but for a benchmark's run, which repeats.
            placement: match &config.faults {
                Some((_, seed)) => StdRng::seed_from_u64(seed ^ PLACEMENT_SEED),
                None => StdRng::from_os_rng(),
            },
            pending: HashMap::new(),
            routes: HashMap::new(),
            next_batch: 0,
            next_request: 0,
            replies: crossbeam_channel::unbounded(),
            completions: VecDeque::with_capacity(HEDGE_HISTORY),
            stats: Stats::for_workers(n),
            config,
            workers,
            in_flight,
            live,
            locating,
            masks,
        }
    }

    fn run(mut self, mut incoming: Receiver<Submission>) -> Stats {
        let mut open = true;
        let replies = self.replies.1.clone();
        loop {
            let now = Instant::now();
            let wake = [
                self.batcher.wake(),
                self.pending
                    .values()
                    .flat_map(|b| [Some(b.deadline), b.hedge.timer(), b.decode_at.as_ref().map(|(at, _)| *at)])
                    .flatten()
                    .min(),
            ]
            .into_iter()
            .flatten()
            .min();
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
            self.decode_after_grace(now);
            self.hedge(now);
            self.expire(now);
            self.live.publish(&self.stats);
            if !open && self.batcher.is_empty() && self.pending.is_empty() {
                return self.stats;
            }
        }
    }

    /// The coding of groups of `k` queries (the configured code's `S`, `A`, `T` and nodes).
    fn coding(&mut self, k: usize) -> Result<Arc<Coding>, CodingError> {
        if let Some(coding) = self.codings.get(&k) {
            return Ok(coding.clone());
        }
        let code = self.config.code.for_queries(k)?;
        let coding = Arc::new(Coding::new(code)?);
        self.codings.insert(k, coding.clone());
        Ok(coding)
    }

    /// How `count` queries are coded: whole groups of `K` and at most one group of the rest
    /// (on the next workers in rotation); each segment's state; and each worker's parts.
    fn layout(&mut self, count: usize) -> Result<BatchLayout, CodingError> {
        let (k, n) = (self.config.code.params().queries(), self.workers.len());
        let (full, rest) = (count / k, count % k);
        let mut segments = Vec::new();
        let mut states = Vec::new();
        let shuffled = self.config.code.params().byzantine() > 0;
        if full > 0 {
            let coding = self.coding(k)?;
            let masks = self.masks(&coding, full);
            segments.push(Segment { coding, first_query: 0, groups: full, masks });
            let workers = match shuffled {
                true => rand::seq::index::sample(&mut self.placement, n, n).into_vec(),
                false => (0..n).collect(),
            };
            states.push(SegmentState::new(workers));
        }
        if rest > 0 {
            let coding = self.coding(rest)?;
            let nodes = coding.workers();
            let workers: Vec<usize> = match shuffled {
                true => rand::seq::index::sample(&mut self.placement, n, nodes).into_vec(),
                false => (0..nodes).map(|i| (self.rotation + i) % n).collect(),
            };
            self.rotation = (self.rotation + nodes) % n;
            let masks = self.masks(&coding, 1);
            segments.push(Segment { coding, first_query: full * k, groups: 1, masks });
            states.push(SegmentState::new(workers));
        }
        let mut parts: Vec<Vec<Part>> = vec![Vec::new(); n];
        for (segment, state) in states.iter().enumerate() {
            for (node, &w) in state.workers.iter().enumerate() {
                parts[w].push(Part { segment, node });
            }
        }
        Ok(BatchLayout { segments, states, parts })
    }

    /// Fresh masks for `groups` groups of `coding` (none when the code has no privacy).
    fn masks(&mut self, coding: &Coding, groups: usize) -> Vec<f32> {
        match &mut self.masks {
            Some(sampler) => sampler.masks(&coding.code, groups, self.config.input_len),
            None => Vec::new(),
        }
    }

    /// Sends batches of every shape this coordinator sends (a group of each `K' < K`, and 1,
    /// 2, 4, ... up to `max_batch` full groups) through every worker once, with zero queries
    /// and no faults, and waits for the answers (a minute at most in all), so that the first
    /// queries' deadlines do not pay for compiling kernels ([`warm_up`]).
    fn warm_up(&mut self) {
        let (k, d) = (self.config.code.params().queries(), self.config.input_len);
        let until = Instant::now() + Duration::from_secs(60);
        let counts = (1..k).chain(warm_up_sizes(self.config.max_batch).into_iter().map(|g| g * k));
        for count in counts {
            let Ok(BatchLayout { segments, parts, .. }) = self.layout(count) else { continue };
            let dispatch = Arc::new(Dispatch::new(vec![0.0; count * d], d, segments));
            let involved: Vec<usize> = (0..self.workers.len()).filter(|&w| !parts[w].is_empty()).collect();
            let jobs = involved.iter().copied().zip(self.works(&dispatch, &involved, &parts)).collect();
            warm_up(&self.workers, jobs, until);
        }
    }

    /// The work of each of `workers` (its `parts` of `dispatch`), one share per device.
    fn works(&self, dispatch: &Arc<Dispatch>, workers: &[usize], parts: &[Vec<Part>]) -> Vec<Work> {
        let devices: Vec<_> = workers.iter().map(|&w| self.workers[w].device()).collect();
        let slots = workers.iter().map(|&w| Some(parts[w].clone())).collect();
        Work::by_device(dispatch, &devices, slots)
    }

    /// Codes `submissions` as whole groups of `K` plus at most one group of the rest, and
    /// sends each worker its rows of them in one request.
    fn dispatch(&mut self, submissions: Vec<Submission>) {
        let (k, n, d) = (self.config.code.params().queries(), self.workers.len(), self.config.input_len);
        let abandonments = front::abandonments(&submissions);
        let mut queries = Vec::with_capacity(submissions.len() * d);
        let mut replies = Vec::with_capacity(submissions.len());
        for submission in submissions {
            queries.extend_from_slice(&submission.query);
            replies.push(Some(submission.reply));
        }
        let count = replies.len();
        self.stats.batches += 1;
        let (full, rest) = (count / k, count % k);
        self.stats.groups += (full + usize::from(rest > 0)) as u64;
        let BatchLayout { segments, states, mut parts } = match self.layout(count) {
            Ok(layout) => layout,
            Err(e) => return self.fail(full + usize::from(rest > 0), replies, e.into()),
        };
        let dispatch = Arc::new(Dispatch::new(queries, d, segments));
        let id = self.next_batch;
        self.next_batch += 1;
        let cancel = Cancel::default();
        let hedge_after = self.hedge_delay();
        let covers = self.cover(hedge_after, &states, &mut parts, Instant::now());
        self.stats.covered_parts += covers.len() as u64;
        let involved: Vec<usize> = (0..n).filter(|&w| !parts[w].is_empty()).collect();
        let sent = self.send(id, &dispatch, &involved, parts, &cancel);
        // Every segment needs enough of its workers to have taken their rows.
        let short = states.iter().zip(dispatch.segments()).find_map(|(state, segment)| {
            let needed = segment.coding.code.params().min_responders();
            let available = state.workers.iter().filter(|&&w| sent.iter().any(|&(s, _)| s == w)).count();
            (available < needed).then_some(ServeError::WorkersUnavailable { available, needed })
        });
        let requests: Vec<u64> = sent.iter().map(|&(_, r)| r).collect();
        if let Some(error) = short {
            cancel.cancel();
            self.forget(&requests);
            return self.fail(full + usize::from(rest > 0), replies, error);
        }
        let now = Instant::now();
        let batch = Batch {
            dispatch,
            replies,
            segments: states,
            answered: vec![false; n],
            requests,
            deadline: now + self.config.deadline,
            dispatched: now,
            hedge: Hedge::after(hedge_after, now),
            decode_at: None,
            trace: self.config.trace_slower_than.map(|_| BatchTrace {
                batch: id,
                queries: count,
                hedge_after,
                took: Duration::ZERO,
                events: std::iter::once(BatchEvent::Sent { workers: sent.iter().map(|&(w, _)| w).collect() })
                    .chain(covers.iter().map(|&(lagging, helper)| BatchEvent::Covered { lagging, helper }))
                    .map(|event| (Duration::ZERO, event))
                    .collect(),
            }),
            cancel,
            abandonments,
        };
        self.pending.insert(id, batch);
    }

    /// Answers [`ServeError::Cancelled`] to the queries nobody waits for any more: those not
    /// sent yet, and the batches all of whose queries are abandoned, whose requests are
    /// cancelled (a worker skips one it has not started).
    fn drop_abandoned(&mut self) {
        for submission in self.batcher.take_abandoned() {
            self.answer(Some(submission.reply), Err(ServeError::Cancelled));
        }
        for batch in front::take_abandoned(&mut self.pending, |b| &b.abandonments) {
            batch.cancel.cancel();
            self.forget(&batch.requests);
            for reply in batch.replies {
                self.answer(reply, Err(ServeError::Cancelled));
            }
        }
    }

    /// Sends batch `id`'s `parts` to each of `workers` (one request each, the workers of one
    /// device sharing one upload and encode), drawing their faults. Returns who took theirs,
    /// with the request's id.
    fn send(
        &mut self,
        id: u64,
        dispatch: &Arc<Dispatch>,
        workers: &[usize],
        mut parts: Vec<Vec<Part>>,
        cancel: &Cancel,
    ) -> Vec<(usize, u64)> {
        let fates = match &mut self.faults {
            Some((plan, rng)) => {
                let serving: Vec<(usize, u64)> = workers.iter().map(|&w| (w, self.served[w])).collect();
                plan.draw(&serving, rng).into_iter().map(Some).collect()
            }
            None => vec![None; workers.len()],
        };
        let works = self.works(dispatch, workers, &parts);
        let now = Instant::now();
        let mut taken = Vec::with_capacity(workers.len());
        for ((&w, work), injected) in workers.iter().zip(works).zip(fates) {
            let request_id = self.next_request;
            self.next_request += 1;
            self.served[w] += 1;
            let request = Request { id: request_id, work, injected, cancel: cancel.clone() };
            if self.workers[w].submit(request, &self.replies.0).is_ok() {
                self.routes.insert(request_id, Route { batch: id, worker: w, parts: std::mem::take(&mut parts[w]) });
                self.lag.sent(w, request_id, now);
                self.stats.sent(w);
                taken.push((w, request_id));
            }
        }
        taken
    }

    /// Drops the routes of cancelled `requests`.
    fn forget(&mut self, requests: &[u64]) {
        for r in requests {
            if let Some(route) = self.routes.remove(r) {
                self.lag.cancelled(route.worker, *r);
            }
        }
    }

    /// Takes a worker's answer; decodes its batch once every group has enough answers.
    fn receive(&mut self, response: Response) {
        let c = self.config.output_len;
        let busy = self.lag.answered(response.worker, response.id, Instant::now());
        let route = self.routes.remove(&response.id);
        // A worker that could not answer is a straggler: its rows come from the others, or
        // from a hedge, at once where the code cannot spare them (its failure is not a delay
        // the hedge delay should wait out).
        let Some(output) = response.output else {
            if let Some(route) = route {
                self.failed(&route);
            }
            return;
        };
        let batch = route.as_ref().and_then(|route| self.pending.get_mut(&route.batch));
        self.stats.answered(response.worker, busy, batch.is_none());
        let (Some(Route { batch: id, parts, .. }), Some(batch)) = (route, batch) else { return };
        batch.note(BatchEvent::Answered { worker: response.worker });
        // A wrong-sized answer cannot be split into its rows: it counts as no answer.
        let segments = batch.dispatch.segments();
        let rows: usize = parts.iter().map(|p| segments[p.segment].groups).sum();
        if output.len() != rows * c {
            return;
        }
        // Hedges go to workers that answered with numbers only.
        if let Some(answered) = batch.answered.get_mut(response.worker) {
            *answered |= finite(&output);
        }
        let mut offset = 0;
        for part in parts {
            let len = segments[part.segment].groups * c;
            let rows = &output[offset..offset + len];
            offset += len;
            // A NaN or an infinity is known bad: its row counts as no answer (decoding masks
            // it out) rather than spending the locator's budget, and its group waits for
            // another answer or a hedge, whose finite rows fill the gaps.
            let non_finite = rows.chunks_exact(c).filter(|r| !finite(r)).count() as u64;
            self.stats.non_finite_answers += non_finite;
            if let Some(worker) = self.stats.worker(response.worker) {
                worker.non_finite_rows += non_finite;
            }
            let state = &mut batch.segments[part.segment];
            match &mut state.outputs[part.node] {
                slot @ None => {
                    *slot = Some(rows.to_vec());
                    state.answered_by[part.node] = Some(response.worker);
                }
                Some(held) => {
                    let chunks = held.chunks_exact_mut(c).zip(rows.chunks_exact(c));
                    for (g, (held, row)) in chunks.enumerate() {
                        if !finite(held) && finite(row) {
                            held.copy_from_slice(row);
                            if state.answered_by[part.node] != Some(response.worker) {
                                state.filled_by.push((part.node, g, response.worker));
                            }
                        }
                    }
                }
            }
        }
        if !self.decodable(id) {
            return;
        }
        let grace = self.decode_grace();
        let complete = self.complete(id);
        let batch = self.pending.get_mut(&id).expect("the batch is pending");
        if batch.decode_at.is_none() {
            // Its completion time: dispatch to decodable, whatever the grace adds.
            let took = batch.dispatched.elapsed();
            let answered = batch.segments.iter().map(|state| state.outputs.iter().map(Option::is_some).collect());
            batch.decode_at = Some(((Instant::now() + grace).min(batch.deadline), answered.collect()));
            if self.completions.len() == HEDGE_HISTORY {
                self.completions.pop_front();
            }
            self.completions.push_back(took);
        }
        if complete || grace.is_zero() {
            let batch = self.pending.remove(&id).expect("the batch is pending");
            self.decode(batch);
        }
    }

    /// Counts `route`'s nodes as failed, and makes its batch's hedge due now once a segment has
    /// more of them than its code's `S`.
    fn failed(&mut self, route: &Route) {
        let Some(batch) = self.pending.get_mut(&route.batch) else { return };
        for part in &route.parts {
            if let Some(state) = batch.segments.get_mut(part.segment) {
                state.failed += 1;
            }
        }
        let segments = batch.dispatch.segments();
        let short = batch
            .segments
            .iter()
            .zip(segments)
            .any(|(state, segment)| state.failed > segment.coding.code.params().stragglers());
        let now = Instant::now();
        if short && batch.decode_at.is_none() && matches!(batch.hedge, Hedge::At(at) if at > now) {
            batch.hedge = Hedge::At(now);
            batch.note(BatchEvent::Failed { worker: route.worker });
        }
    }

    /// Whether batch `id` has every answer it will get: each node's rows, all numbers, or no
    /// request of it still outstanding.
    fn complete(&self, id: u64) -> bool {
        let Some(batch) = self.pending.get(&id) else { return true };
        let answered = batch
            .segments
            .iter()
            .all(|state| state.outputs.iter().all(|o| o.as_ref().is_some_and(|rows| finite(rows))));
        answered || !self.routes.values().any(|route| route.batch == id)
    }

    /// How long a decodable batch waits for the rest of its answers
    /// ([`CoordinatorConfig::decode_grace`]): nothing until a batch has completed.
    fn decode_grace(&self) -> Duration {
        median(&self.completions).map_or(Duration::ZERO, |median| median.mul_f64(self.config.decode_grace))
    }

    /// Decodes the batches whose grace for their last answers has run out, from the answers
    /// they had when they became decodable: a group decodes from all `N` answers or from its
    /// first `N - S` ("normal" and "degraded", the two approximations `approxifer eval`
    /// measures), not from a subset between, which can extrapolate worse (`K = 2`, `N = 5`:
    /// the answers of workers 0, 1 and 2 weigh their three for the second query's node by
    /// 0.45, -0.55 and 1.09, those of 0 and 2 theirs by -0.71 and 1.71, and on the remote
    /// tests' model the first missed it by more than 1).
    fn decode_after_grace(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, b)| b.decode_at.as_ref().is_some_and(|(at, _)| *at <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let mut batch = self.pending.remove(&id).expect("listed as pending");
            let (_, answered) = batch.decode_at.take().expect("listed as due");
            self.stats.grace_expired += 1;
            for (state, answered) in batch.segments.iter_mut().zip(answered) {
                state.outputs.iter_mut().zip(answered).filter(|(_, a)| !a).for_each(|(o, _)| *o = None);
            }
            self.decode(batch);
        }
    }

    /// Gives the coded queries of each lagging worker (one that has been on a request for
    /// [`LAG_FRACTION`] of the hedge delay) also to the worker of the dispatch, not lagging,
    /// with the fewest parts in it, and to a second one if one has nothing else outstanding,
    /// in the requests they are sent anyway. A worker straggling for many service times leaves
    /// every batch meanwhile one answer short of the `S` the code absorbs, so a second
    /// straggler among them costs a hedge delay, a wait for a free helper and another pass;
    /// an extra row in a request costs a few more rows of the same forward pass. The second
    /// copy is for the helper itself straggling (it made the tail smaller at 50 % and 80 %
    /// load: README, "Covering lagging workers"); a busy helper would only queue it. Returns
    /// each cover, as (lagging worker, helper).
    ///
    /// Not with liars in the code (`A > 0`): a liar computing two of a group's coded queries
    /// would be two of the `A` the locator removes, on every batch of a straggle (a hedge
    /// risks it on late batches only). Nor when hedging is off (`hedge_after`, the batch's
    /// [`Loop::hedge_delay`]), or with colluders.
    fn cover(
        &self,
        hedge_after: Option<Duration>,
        states: &[SegmentState],
        parts: &mut [Vec<Part>],
        now: Instant,
    ) -> Vec<(usize, usize)> {
        let Some(hedge) = hedge_after.filter(|_| self.config.code.params().byzantine() == 0) else {
            return Vec::new();
        };
        let lagging = self.lag.lagging(hedge.mul_f64(LAG_FRACTION), now);
        let mut covers = Vec::new();
        // Most workers lagging is a loaded box, not stragglers: extra rows there only add to
        // the load.
        let count = lagging.iter().filter(|&&l| l).count();
        if count == 0 || 2 * count >= lagging.len() {
            return covers;
        }
        let outstanding = self.outstanding();
        for (segment, state) in states.iter().enumerate() {
            for (node, &w) in state.workers.iter().enumerate() {
                if !lagging[w] {
                    continue;
                }
                for copy in 0..2 {
                    let helper = (0..parts.len())
                        .filter(|&h| !lagging[h] && !parts[h].is_empty())
                        .filter(|&h| copy == 0 || outstanding[h] == 0)
                        .filter(|&h| !parts[h].contains(&Part { segment, node }))
                        .min_by_key(|&h| (parts[h].len(), outstanding[h]));
                    let Some(helper) = helper else { break };
                    parts[helper].push(Part { segment, node });
                    covers.push((w, helper));
                }
            }
        }
        covers
    }

    /// Per worker, its requests outstanding for batches still pending.
    fn outstanding(&self) -> Vec<usize> {
        let mut outstanding = vec![0; self.workers.len()];
        for route in self.routes.values() {
            outstanding[route.worker] += 1;
        }
        outstanding
    }

    /// How long after dispatch a batch is hedged: [`hedge_delay`] of the configured delay and
    /// the recent completion times. Never with a private code (`T > 0`): a copy shows a worker
    /// a second coded query of a group, a coalition of two against a code built for `T`.
    fn hedge_delay(&self) -> Option<Duration> {
        if self.config.code.params().privacy() > 0 {
            return None;
        }
        Some(hedge_delay(self.config.hedge_after?, &self.completions))
    }

    /// Whether every group of batch `id` has at least `N - S` finite answers, counted as
    /// [`SegmentState::usable_answers`] where liars are tolerated until every node has answered.
    fn decodable(&self, id: u64) -> bool {
        let c = self.config.output_len;
        let Some(batch) = self.pending.get(&id) else { return false };
        batch.segments.iter().zip(batch.dispatch.segments()).all(|(state, segment)| {
            let params = segment.coding.code.params();
            (0..segment.groups).all(|g| {
                // Once every node has answered nothing more can come: decode, removing what
                // the code can ([`remove_their_other_answers`]).
                let finite = state.finite_answers(g, c);
                finite >= params.min_responders()
                    && (params.byzantine() == 0
                        || finite == state.outputs.len()
                        || state.usable_answers(g, c, params.byzantine()) >= params.min_responders())
            })
        })
    }

    /// Decodes every segment of `batch` (one call each, a responder mask per group) and
    /// answers its queries.
    fn decode(&mut self, mut batch: Batch) {
        batch.note(BatchEvent::Decoded);
        self.keep_trace(&mut batch);
        batch.cancel.cancel();
        self.forget(&batch.requests);
        let c = self.config.output_len;
        let mut replies = batch.replies;
        for (state, segment) in batch.segments.iter().zip(batch.dispatch.segments()) {
            let coding = &segment.coding;
            let (k, n, groups) = (coding.queries(), coding.workers(), segment.groups);
            let mut outputs = vec![0.0f32; groups * n * c];
            let mut masks = vec![false; groups * n];
            for (node, rows) in state.outputs.iter().enumerate() {
                let Some(rows) = rows else { continue };
                for g in 0..groups {
                    let row = &rows[g * c..(g + 1) * c];
                    if finite(row) {
                        outputs[(g * n + node) * c..][..c].copy_from_slice(row);
                        masks[g * n + node] = true;
                    }
                }
            }
            let queries = segment.first_query..segment.first_query + groups * k;
            let segment_replies: Vec<_> = replies[queries.clone()].iter_mut().map(Option::take).collect();
            let (served, placement) = (state.served_by(), state.placement(groups));
            match self.decode_segment(coding, (&served, &placement), outputs, &mut masks) {
                Ok(decoded) => {
                    self.stats.decoded_groups += groups as u64;
                    for (q, reply) in segment_replies.into_iter().enumerate() {
                        let (g, j) = (q / k, q % k);
                        let approximate = !coding.direct[j].iter().any(|&w| masks[g * n + w]);
                        let answer = Answer { output: decoded[q * c..(q + 1) * c].to_vec(), approximate };
                        self.answer(reply, Ok(answer));
                    }
                }
                Err(e) => self.fail(groups, segment_replies, e.into()),
            }
        }
    }

    /// Removes located liars (codes with `A > 0`) from `masks`, then decodes, from every node
    /// once the missing rows are filled in where the locator learnt a predictor
    /// ([`Locator::imputed`]). `served`: who answered each node; `placement`: whose answer
    /// each group's row of it is (another worker's where a hedge filled in a NaN). The
    /// answers of workers suspected over many batches ([`OnlineLocator::suspected_workers`])
    /// are removed first, as known bad (NaN), each one of the code's `A`.
    fn decode_segment(
        &mut self,
        coding: &Coding,
        (served, placement): (&[usize], &[usize]),
        mut outputs: Vec<f32>,
        masks: &mut Vec<bool>,
    ) -> Result<Vec<f32>, CodingError> {
        let (c, start) = (self.config.output_len, Instant::now());
        let mut filled = None;
        if coding.code.params().byzantine() > 0 {
            let (n, byzantine) = (coding.code.params().workers(), coding.code.params().byzantine());
            let suspected = self.locating.suspected_workers();
            // At most `A` of them per group: a worker that also answered another node (a
            // hedge) would otherwise exceed what the code can remove; the locator judges the
            // rest. The learner sees the answers as given (`raw`).
            let blanked: Vec<(usize, usize)> = placement
                .chunks_exact(n)
                .enumerate()
                .flat_map(|(g, placed)| {
                    (0..n).filter(|&node| suspected.contains(&placed[node])).take(byzantine).map(move |node| (g, node))
                })
                .collect();
            let raw = if blanked.is_empty() { None } else { Some(outputs.clone()) };
            for &(g, node) in &blanked {
                outputs[(g * n + node) * c..][..c].fill(f32::NAN);
            }
            let locator = self.locating.for_code(&coding.code);
            let mut location = locate(&coding.code, &locator, &outputs, c, masks)?;
            remove_their_other_answers(&mut location, placement, coding.erasure.params().min_responders());
            // It learns each node's worker from the node's own answers: a row another worker
            // filled in is left out.
            let own: Vec<bool> =
                masks.iter().zip(placement).enumerate().map(|(at, (&m, &w))| m && w == served[at % n]).collect();
            self.locating.observe(&coding.code, raw.as_deref().unwrap_or(&outputs), &own, &location.located, served);
            // Every responder's answer was judged (the located among them, below).
            for (at, _) in masks.iter().enumerate().filter(|(_, answered)| **answered) {
                if let Some(worker) = placement.get(at).and_then(|&w| self.stats.worker(w)) {
                    worker.judged += 1;
                }
            }
            *masks = location.masks;
            self.stats.located_workers += location.located.iter().map(Vec::len).sum::<usize>() as u64;
            for (g, located) in location.located.iter().enumerate() {
                for &node in located {
                    if let Some(worker) = placement.get(g * n + node).and_then(|&w| self.stats.worker(w)) {
                        worker.located += 1;
                    }
                }
            }
            // With a learnt predictor the missing rows are filled in and every node decodes.
            filled = locator.imputed(&coding.code, &outputs, c, masks)?;
        }
        let decoded = match filled {
            Some(filled) => self.config.codec.decode(&coding.code, &filled, c, &vec![true; masks.len()]),
            None => self.config.codec.decode(&coding.erasure, &outputs, c, masks),
        };
        self.stats.decode_ns += start.elapsed().as_nanos() as u64;
        decoded
    }

    /// Re-sends, for every batch whose hedge time has come, each of its unanswered coded
    /// queries to a worker that has answered it, has nothing else outstanding and is not
    /// lagging on a request nobody needs any more (round robin
    /// over them); each helper forms its share on its own device. Sending only as many as a
    /// group still needs measured a worse tail (serve-bench at 200 q/s, 10k queries: p99.9 -
    /// p50 21.7 against 19.6 ms) for no saving: the copies not needed are cancelled when the
    /// batch decodes. A helper busy with other batches would only queue the copy behind them,
    /// and under load every copy delays the batches after it (on an H200 at half load, hedges
    /// to busy workers took ApproxIFER's p50 from 26 to 273 ms): with no idle helper, the
    /// batch waits for one, and its hedge goes out the moment one has nothing outstanding
    /// (looking again a hedge period later, though a helper is free within one service time,
    /// measured 30-42 ms p99.9 - p50 at 600 q/s against 25-26). A batch still short about a
    /// median completion time after its hedge is hedged again: a copy can meet a straggler
    /// or a crash too.
    fn hedge(&mut self, now: Instant) {
        let n = self.workers.len();
        // A decodable batch waiting for its last answers needs no hedge.
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, b)| b.decode_at.is_none() && b.hedge.is_due(now))
            .map(|(&id, _)| id)
            .collect();
        if due.is_empty() {
            return;
        }
        // A helper lagging on a request whose batch was decoded without it would hold the copy
        // back as long: it is as busy as one with requests outstanding. (One merely running
        // such a request is not: it is free within about a service time, and waiting for it
        // to have nothing at all to run lets new batches take it first.)
        let Some(delay) = self.hedge_delay() else { return };
        let lagging = self.lag.lagging(delay.mul_f64(LAG_FRACTION), now);
        let mut busy: Vec<bool> =
            self.outstanding().iter().zip(&lagging).map(|(&requests, &lagging)| requests > 0 || lagging).collect();
        // Nor does a worker suspected of lying serve another node of a group.
        for w in self.locating.suspected_workers() {
            if let Some(busy) = busy.get_mut(w) {
                *busy = true;
            }
        }
        for id in due {
            let Some(batch) = self.pending.get_mut(&id) else { continue };
            let helpers: Vec<usize> = (0..n).filter(|&w| batch.answered[w] && !busy[w]).collect();
            if helpers.is_empty() {
                if batch.hedge != Hedge::WhenIdle {
                    batch.note(BatchEvent::HedgeWaiting);
                }
                batch.hedge = Hedge::WhenIdle;
                continue;
            }
            // Hedged again if still short once the copies should have been answered (about
            // a median completion time: they went to workers with nothing else to run), as a
            // copy can meet a straggler too.
            batch.hedge = Hedge::At(now + delay.div_f64(HEDGE_MARGIN));
            let mut parts: Vec<Vec<Part>> = vec![Vec::new(); n];
            let missing = batch.segments.iter().enumerate().flat_map(|(segment, state)| {
                state
                    .outputs
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.as_ref().is_none_or(|rows| !finite(rows)))
                    .map(move |(node, _)| Part { segment, node })
            });
            // With liars tolerated, a helper takes at most one node of a segment besides its
            // own: a liar holding more would be more lies in a group than the locator looks
            // for. The rest wait for the next round's helpers.
            let segments = batch.dispatch.segments();
            let mut held: HashMap<(usize, usize), usize> = HashMap::new();
            for (segment, state) in batch.segments.iter().enumerate() {
                for &by in state.answered_by.iter().flatten() {
                    *held.entry((by, segment)).or_default() += 1;
                }
                // A node whose rows a worker filled in counts as one it holds.
                let mut filled: Vec<(usize, usize)> = state.filled_by.iter().map(|&(node, _, w)| (w, node)).collect();
                filled.sort_unstable();
                filled.dedup();
                for (by, _) in filled {
                    *held.entry((by, segment)).or_default() += 1;
                }
            }
            let mut next = 0;
            for part in missing {
                let open = |w: &usize| {
                    segments[part.segment].coding.code.params().byzantine() == 0
                        || held.get(&(*w, part.segment)).is_none_or(|&nodes| nodes < 2)
                };
                let Some(at) = (0..helpers.len()).map(|i| (next + i) % helpers.len()).find(|&at| open(&helpers[at]))
                else {
                    continue;
                };
                next = at + 1;
                *held.entry((helpers[at], part.segment)).or_default() += 1;
                parts[helpers[at]].push(part);
            }
            let (dispatch, cancel) = (batch.dispatch.clone(), batch.cancel.clone());
            let (mut sent, mut hedged_to) = (Vec::new(), Vec::new());
            // One share per helper: a hedge is formed on the helper's own device.
            for w in helpers {
                if parts[w].is_empty() {
                    continue;
                }
                hedged_to.push(w);
                let mut own = vec![Vec::new(); n];
                own[w] = std::mem::take(&mut parts[w]);
                busy[w] = true;
                sent.extend(self.send(id, &dispatch, &[w], own, &cancel).into_iter().map(|(_, r)| r));
            }
            self.stats.hedged_requests += sent.len() as u64;
            if let Some(batch) = self.pending.get_mut(&id)
                && !hedged_to.is_empty()
            {
                batch.note(BatchEvent::Hedged { helpers: hedged_to });
                batch.requests.extend(sent);
            }
        }
    }

    /// Fails every batch whose deadline has passed.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, b)| b.decode_at.is_none() && b.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        let c = self.config.output_len;
        for id in expired {
            let mut batch = self.pending.remove(&id).expect("listed as pending");
            batch.note(BatchEvent::Expired);
            self.keep_trace(&mut batch);
            batch.cancel.cancel();
            self.forget(&batch.requests);
            let deadline_ms = self.config.deadline.as_millis();
            let mut replies = batch.replies;
            for (state, segment) in batch.segments.iter().zip(batch.dispatch.segments()) {
                let needed = segment.coding.code.params().min_responders();
                let answered = (0..segment.groups).map(|g| state.finite_answers(g, c)).min().unwrap_or(0);
                let k = segment.coding.queries();
                let queries = segment.first_query..segment.first_query + segment.groups * k;
                let segment_replies = replies[queries].iter_mut().map(Option::take).collect();
                self.fail(
                    segment.groups,
                    segment_replies,
                    ServeError::DeadlineMissed { answered, needed, deadline_ms },
                );
            }
        }
    }

    /// Keeps `batch`'s timeline among the slowest if it took long enough to be traced.
    fn keep_trace(&mut self, batch: &mut Batch) {
        let (Some(mut trace), Some(slower_than)) = (batch.trace.take(), self.config.trace_slower_than) else {
            return;
        };
        trace.took = batch.dispatched.elapsed();
        if trace.took >= slower_than {
            keep_slowest(&mut self.stats.slow_batches, trace);
        }
    }

    /// Fails `groups` groups, whose queries' replies are `replies`.
    fn fail(&mut self, groups: usize, replies: Vec<Option<Sender<Result<Answer, ServeError>>>>, error: ServeError) {
        self.stats.failed_groups += groups as u64;
        for reply in replies {
            self.answer(reply, Err(error.clone()));
        }
    }

    /// Sends one query's result and releases its admission slot.
    fn answer(&mut self, reply: Option<Sender<Result<Answer, ServeError>>>, result: Result<Answer, ServeError>) {
        if let Some(reply) = reply {
            answer(&self.in_flight, &mut self.stats, reply, result);
        }
    }
}

/// Whether every value is a number (no NaN, no infinity).
fn finite(values: &[f32]) -> bool {
    values.iter().all(|v| v.is_finite())
}

/// A worker that answered two nodes of a group (the second a hedge's copy) lied in both if
/// the locator found it in one: a liar's every answer in a group goes with the one located,
/// where the locator, looking for `A` liars, would leave the second to be decoded. As many
/// as leave the group `min_responders` to decode from. (`placement`: whose answer each row
/// is, `[groups, N]`.)
fn remove_their_other_answers(location: &mut Location, placement: &[usize], min_responders: usize) {
    let n = location.masks.len() / location.located.len().max(1);
    for (g, located) in location.located.iter_mut().enumerate() {
        let masks = &mut location.masks[g * n..(g + 1) * n];
        let workers = &placement[g * n..(g + 1) * n];
        let mut spare = masks.iter().filter(|&&answered| answered).count().saturating_sub(min_responders);
        let liars: Vec<usize> = located.iter().map(|&node| workers[node]).collect();
        for (node, worker) in workers.iter().enumerate() {
            if spare > 0 && masks[node] && liars.contains(worker) {
                masks[node] = false;
                located.push(node);
                spare -= 1;
            }
        }
        located.sort_unstable();
    }
}

/// How long after dispatch a batch is hedged, given the configured delay (`floor`) and the
/// last batches' completion times (dispatch to decodable): the floor until [`HEDGE_HISTORY`]
/// have completed, then the larger of it and [`HEDGE_MARGIN`] times their median.
fn hedge_delay(floor: Duration, completions: &VecDeque<Duration>) -> Duration {
    match median(completions) {
        Some(median) if completions.len() == HEDGE_HISTORY => floor.max(median.mul_f64(HEDGE_MARGIN)),
        _ => floor,
    }
}

/// The median of the recent completion times, if any.
fn median(completions: &VecDeque<Duration>) -> Option<Duration> {
    let mut recent: Vec<Duration> = completions.iter().copied().collect();
    let middle = recent.len() / 2;
    (!recent.is_empty()).then(|| *recent.select_nth_unstable(middle).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hedge_delay_follows_typical_batches_not_the_late_ones() {
        let ms = Duration::from_millis;
        let floor = ms(4);
        let mut completions: VecDeque<Duration> = (0..HEDGE_HISTORY - 1).map(|_| ms(5)).collect();
        assert_eq!(hedge_delay(floor, &completions), floor, "the configured delay until the history is full");
        completions.push_back(ms(6));
        assert_eq!(hedge_delay(floor, &completions), ms(10), "twice the median");
        assert_eq!(hedge_delay(ms(15), &completions), ms(15), "never below the configured delay");
        // A few late (hedged) batches in the history do not make the next late ones later.
        for _ in 0..3 {
            completions.pop_front();
            completions.push_back(ms(30));
        }
        assert_eq!(hedge_delay(floor, &completions), ms(10));
        // A device that slows every batch down moves the delay with it.
        let loaded: VecDeque<Duration> = (0..HEDGE_HISTORY as u64).map(|i| ms(40 + i % 5)).collect();
        assert_eq!(hedge_delay(floor, &loaded), ms(84));
    }
}
