//! `serve-bench`: every scheme on the same workload (arrivals, queries, faults, seed, batching),
//! each on its own pool of local workers placed on the box's devices, measured from submission
//! to answer, next to the bare forward rate of the same replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Select;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

use burn::tensor::{Device, Tensor, TensorData};

use super::answer::{ServeError, Ticket, WorkerStats};
use super::coordinator::Codec;
use super::faults::FaultPlan;
use super::locating::Learning;
use super::pool::{Placement, PlacementError, background_loads, local_workers};
use super::remote::{Endpoint, RemoteConfig, RemoteWorker};
use super::scheme::{Scheme, SchemeConfig, SchemeKind};
use super::worker::{ServedModel, Worker};
use crate::attack::Attack;
use crate::kernels::{Calibration, Locator};

/// How queries arrive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrivals {
    /// Open loop: a Poisson process at this many queries per second.
    Poisson { rate_qps: f64 },
    /// Closed loop: this many queries outstanding at all times.
    Closed { concurrency: usize },
}

/// The workload.
#[derive(Clone, Debug)]
pub struct ServeBenchConfig {
    /// Queries per group for the coded scheme; uncoded and hedging use `K` workers,
    /// replication `copies x K`, ApproxIFER `K + 1`.
    pub k: usize,
    pub queries: usize,
    pub arrivals: Arrivals,
    pub plan: FaultPlan,
    pub seed: u64,
    pub deadline: Duration,
    /// Groups (coded) or queries (baselines) per batch; 1 is the per-query path.
    pub max_batch: usize,
    pub max_queue_delay: Duration,
    /// ApproxIFER's and ParM's queue delay (`None`: `max_queue_delay`).
    pub coded_queue_delay: Option<Duration>,
    /// How long ApproxIFER waits for a decodable batch's last answers
    /// ([`CoordinatorConfig::decode_grace`](super::CoordinatorConfig::decode_grace)).
    pub decode_grace: f64,
    /// Workers per device (`None`: spread round robin over the devices).
    pub workers_per_device: Option<usize>,
    /// Hedged requests send a backup after this long; `None`: the uncoded run's p95.
    pub hedge_after: Option<Duration>,
    pub copies: usize,
    /// Where ApproxIFER's coordinator decodes its batches.
    pub codec: Codec,
    /// When ApproxIFER re-sends a group's unanswered coded queries to workers that answered.
    pub coded_hedge_after: Option<Duration>,
    /// The schemes to run, in [`SCHEMES`]' order.
    pub schemes: Vec<SchemeKind>,
    /// ApproxIFER keeps the timelines of its slowest batches that took at least this long
    /// ([`SchemeReport::slow_batches`]).
    pub trace_slower_than: Option<Duration>,
    /// Wrong answers ApproxIFER's code finds and removes per group (`N = 2K + 2A`, with
    /// `S = 1`); the other schemes have no defence against them.
    pub byzantine: usize,
    /// How ApproxIFER finds them, and whether it learns from its traffic.
    pub locator: Locator,
    pub partial_calibrations: Vec<Arc<Calibration>>,
    pub learning: Option<Learning>,
    /// Workers of every scheme's pool that lie, on top of what the plan says.
    pub liars: Liars,
    /// How a lying worker alters each row of its answer.
    pub attack: Attack,
}

/// Byzantine workers: `count` of each scheme's pool, chosen by the workload's seed, each
/// answering a request wrongly with probability `probability`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Liars {
    pub count: usize,
    pub probability: f64,
}

impl Liars {
    pub const NONE: Liars = Liars { count: 0, probability: 0.0 };

    /// `plan` with `count` of a pool of `workers`, chosen by `seed`, lying (the same seed
    /// picks the same positions in pools of one size), and every worker of the pool that
    /// lies in it, the plan's own included (increasing).
    fn place(self, plan: &FaultPlan, workers: usize, seed: u64) -> (FaultPlan, Vec<usize>) {
        let mut plan = plan.clone();
        if self.count > 0 {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x11a5);
            let chosen = rand::seq::index::sample(&mut rng, workers, self.count.min(workers));
            if plan.workers.len() < workers {
                plan.workers.resize(workers, super::faults::WorkerFaults::NONE);
            }
            for w in chosen {
                plan.workers[w].byzantine_probability = self.probability;
            }
        }
        let lying = (0..workers).filter(|&w| plan.worker(w).byzantine_probability > 0.0).collect();
        (plan, lying)
    }
}

/// One scheme's figures; the JSON of `serve-bench --json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SchemeReport {
    pub scheme: String,
    /// `batched`, or `per-query` (one query or group per forward pass).
    pub path: String,
    pub max_batch: usize,
    /// The workload's seed (arrivals, queries and faults).
    pub seed: u64,
    /// How long a batch that is not full waited for queries.
    pub max_queue_delay_ms: f64,
    pub workers: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Queries answered per second, over the run.
    pub throughput_qps: f64,
    /// The same workers on the same devices running forward passes of `max_batch` rows back
    /// to back with no coordinator: rows per second, the ceiling (a coded scheme serves at
    /// most K/N of it).
    pub bare_forward_qps: f64,
    pub worker_seconds: f64,
    /// Worker busy time per 1000 answered queries.
    pub device_seconds_per_1000: f64,
    /// The coordinator's locate-and-decode time per batch, in microseconds (0 for baselines).
    pub decode_us_per_batch: f64,
    /// ApproxIFER's coded queries re-sent to workers that had answered, after the hedge delay
    /// (0 for the other schemes: hedged requests' backups are a scheme of their own).
    pub hedged_requests: u64,
    /// ApproxIFER's coded queries of lagging workers also given to others at dispatch (0 for
    /// the other schemes).
    pub covered_parts: u64,
    /// ApproxIFER's batches decoded when their wait for their last answers ended, an answer
    /// still missing (0 for the other schemes).
    pub grace_expired: u64,
    /// Fraction of answered queries whose argmax is the label.
    pub accuracy: f64,
    pub queries: usize,
    pub answered: usize,
    pub errors: usize,
    /// Answers decoded rather than computed on the query itself.
    pub approximate: usize,
    /// Per worker, the scheme's books: requests, answers (late ones too), busy time.
    pub per_worker: Vec<WorkerStats>,
    /// Every answered query's latency, sorted (for the CDF plot).
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    /// The slowest batches' timelines, slowest first, when traced
    /// ([`ServeBenchConfig::trace_slower_than`]; coded schemes only).
    #[serde(skip)]
    pub slow_batches: Vec<super::trace::BatchTrace>,
    /// Who lied and what the locator made of it (its keys at the top level of the JSON).
    #[serde(flatten)]
    pub byzantine: ByzantineBooks,
}

/// A run's liars and its locator's work.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ByzantineBooks {
    /// The workers that lie: [`ServeBenchConfig::liars`] and the plan's own.
    pub liars: Vec<usize>,
    /// Groups decoded (coded schemes), and how many times the locator removed a liar's
    /// answer from one and an honest worker's.
    pub decoded_groups: u64,
    pub located_liars: u64,
    pub located_honest: u64,
    /// Honest workers' answers the locator judged, and the share of them it removed (`None`
    /// where none was judged).
    pub judged_honest: u64,
    pub false_positive_rate: Option<f64>,
    /// The locator in use when the run ended (`None` without one: baselines, `A = 0`), and
    /// how many calibrations it had fitted from the run's traffic.
    pub locator: Option<String>,
    pub refits: u64,
    /// Positions the learner had too few honest answers from to fit a calibration
    /// ([`LocatorState::short_positions`](super::LocatorState::short_positions)).
    pub short_positions: Vec<usize>,
    /// Positions the calibration in use at the end was fitted without
    /// ([`LocatorState::suspected`](super::LocatorState::suspected)).
    pub suspected: Vec<usize>,
    /// Calibrations fitted from traffic for the codes of partial groups, `[K', refits]`
    /// ([`LocatorState::partial_refits`](super::LocatorState::partial_refits)).
    pub partial_refits: Vec<(usize, u64)>,
    /// The `K'` whose partial groups' code a calibration located at the end
    /// ([`LocatorState::partial_calibrated`](super::LocatorState::partial_calibrated)).
    pub partial_calibrated: Vec<usize>,
    /// The workers suspected of lying over many batches at the end, whose answers were being
    /// removed from every group
    /// ([`LocatorState::suspected_workers`](super::LocatorState::suspected_workers)).
    pub suspected_workers: Vec<usize>,
}

/// The schemes serve-bench compares, in the order it runs them: uncoded first, so that its p95
/// is known when hedging needs it.
pub const SCHEMES: [SchemeKind; 5] =
    [SchemeKind::Uncoded, SchemeKind::Replication, SchemeKind::Hedged, SchemeKind::Approxifer, SchemeKind::Parm];

impl ServeBenchConfig {
    /// Every scheme's settings (hedging's delay is set when the uncoded run is done).
    fn settings(&self, input_len: usize, output_len: usize) -> SchemeConfig {
        SchemeConfig {
            k: self.k,
            stragglers: 1,
            byzantine: self.byzantine,
            locator: self.locator.clone(),
            partial_calibrations: self.partial_calibrations.clone(),
            learning: self.learning.clone(),
            privacy: Default::default(),
            copies: self.copies,
            hedge_after: Duration::ZERO,
            coded_hedge_after: self.coded_hedge_after,
            input_len,
            output_len,
            max_batch: self.max_batch,
            max_queue_delay: self.max_queue_delay,
            coded_queue_delay: self.coded_queue_delay,
            decode_grace: self.decode_grace,
            deadline: self.deadline,
            capacity: self.queries.max(1),
            faults: Some((self.plan.clone(), self.seed)),
            codec: self.codec.clone(),
            trace_slower_than: self.trace_slower_than,
        }
    }

    /// Whether every scheme's pool can hold the liars, who lie with a probability.
    pub fn check_liars(&self) -> anyhow::Result<()> {
        let Liars { count, probability } = self.liars;
        anyhow::ensure!(
            (0.0..=1.0).contains(&probability),
            "the liars' lie probability must be in [0, 1], not {probability}"
        );
        let settings = self.settings(1, 1);
        match self.schemes.iter().find(|kind| kind.workers(&settings) < count) {
            Some(kind) => {
                anyhow::bail!("{count} liars: the {} scheme has {} workers", kind.name(), kind.workers(&settings))
            }
            None => Ok(()),
        }
    }

    /// Where each scheme's workers go on `devices` devices: an error before anything runs when
    /// one of the pools does not fit.
    pub fn placements(&self, devices: usize) -> Result<Vec<(SchemeKind, Placement)>, PlacementError> {
        let settings = self.settings(1, 1);
        self.schemes
            .iter()
            .map(|&kind| Ok((kind, Placement::new(kind.workers(&settings), devices, self.workers_per_device)?)))
            .collect()
    }
}

/// Where each scheme's workers come from.
pub enum Workers<'a> {
    /// Model replicas made by `replica(scheme, worker, device)` on `devices`, placed as the
    /// config says (ParM's workers answer logits, its last one runs the parity model).
    Local { devices: &'a [Device], replica: &'a dyn Fn(SchemeKind, usize, &Device) -> ServedModel },
    /// v2 servers: each scheme uses the first `N` it needs. A scheme needing more than there
    /// are is not run (and said so on stderr).
    Remote { endpoints: &'a [Endpoint], input_shape: Vec<usize>, timeout: Duration, concurrency: usize },
}

/// Runs uncoded, replication, hedged and ApproxIFER (N = K + 1, S = 1) on `inputs` (cycled),
/// scoring answers against `labels`, each scheme on its own `workers`. `progress(done,
/// total)` counts answered queries.
pub fn run(
    config: &ServeBenchConfig,
    workers: &Workers,
    inputs: &[Vec<f32>],
    labels: &[u8],
    output_len: usize,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<SchemeReport>> {
    anyhow::ensure!(!inputs.is_empty() && inputs.len() == labels.len(), "inputs and labels must match");
    anyhow::ensure!(config.max_batch >= 1, "the batch size must be at least 1");
    config.plan.validate()?;
    config.check_liars()?;
    anyhow::ensure!(
        config.liars.count == 0 || matches!(workers, Workers::Local { .. }),
        "liars are injected into local workers; remote servers answer as they do"
    );
    let input_len = inputs[0].len();
    let mut settings = config.settings(input_len, output_len);
    // Every placement is checked before any scheme runs.
    let runs: Vec<(SchemeKind, Option<Placement>)> = match workers {
        Workers::Local { devices, .. } => {
            config.placements(devices.len())?.into_iter().map(|(kind, placement)| (kind, Some(placement))).collect()
        }
        Workers::Remote { endpoints, .. } => config
            .schemes
            .iter()
            .filter(|kind| {
                let needed = kind.workers(&settings);
                let enough = needed <= endpoints.len();
                if !enough {
                    eprintln!("{}: not run (it takes {needed} workers; {} given)", kind.name(), endpoints.len());
                }
                enough
            })
            .map(|&kind| (kind, None))
            .collect(),
    };
    let total = runs.len() * config.queries;
    let mut reports: Vec<SchemeReport> = Vec::new();
    for (i, (kind, placement)) in runs.into_iter().enumerate() {
        // Uncoded runs first, so its p95 is known when hedging needs it.
        let uncoded = reports.iter().find(|r| r.scheme == SchemeKind::Uncoded.name());
        settings.hedge_after = match (config.hedge_after, uncoded) {
            (Some(after), _) => after,
            (None, Some(uncoded)) => Duration::from_secs_f64(uncoded.percentile(0.95).max(0.0) / 1e3),
            (None, None) if kind == SchemeKind::Hedged => {
                anyhow::bail!("hedged requests need --hedge-after-ms when the uncoded scheme is not run")
            }
            (None, None) => Duration::ZERO,
        };
        let (plan, liars) = config.liars.place(&config.plan, kind.workers(&settings), config.seed);
        settings.faults = Some((plan, config.seed));
        let pool = Pool::start(workers, (kind, config), placement.as_ref(), kind.workers(&settings), output_len);
        let bare = match (workers, &pool) {
            (Workers::Local { devices, .. }, Pool::Local(local)) => bare_forward_qps(
                local,
                devices,
                placement.as_ref().expect("local runs are placed"),
                inputs,
                config.max_batch,
            ),
            _ => f64::NAN,
        };
        // Devices the plan loads stay busy for the scheme's run (not for the ceiling above).
        let _loads = match (workers, &placement) {
            (Workers::Local { devices, .. }, Some(placement)) => background_loads(devices, placement, &config.plan),
            _ => Vec::new(),
        };
        let scheme = kind.start(&settings, pool.workers())?;
        // What the workers did before the first query (warming up) is not the workload's.
        let busy_before = pool.busy_seconds();
        let done_before = i * config.queries;
        let outcome = drive(scheme.as_ref(), config, inputs, |done| progress(done_before + done, total))?;
        let locator = scheme.locator_state();
        let stats = scheme.shutdown(); // everything accepted has been answered
        let worker_seconds = pool.busy_seconds() - busy_before;
        let mut report = outcome.report(kind.name(), pool.len(), worker_seconds, labels);
        report.path = if config.max_batch == 1 { "per-query" } else { "batched" }.into();
        report.max_batch = config.max_batch;
        report.seed = config.seed;
        report.max_queue_delay_ms = kind.queue_delay(&settings).as_secs_f64() * 1e3;
        report.bare_forward_qps = bare;
        report.decode_us_per_batch = stats.decode_ns as f64 / 1e3 / stats.batches.max(1) as f64;
        report.hedged_requests = stats.hedged_requests;
        report.covered_parts = stats.covered_parts;
        report.grace_expired = stats.grace_expired;
        let (located_liars, located_honest) =
            stats.workers.iter().enumerate().fold((0, 0), |(l, h), (w, s)| {
                if liars.contains(&w) { (l + s.located, h) } else { (l, h + s.located) }
            });
        let honest = stats.workers.iter().enumerate().filter(|(w, _)| !liars.contains(w));
        let judged_honest: u64 = honest.map(|(_, s)| s.judged).sum();
        report.byzantine = ByzantineBooks {
            liars,
            decoded_groups: stats.decoded_groups,
            located_liars,
            located_honest,
            judged_honest,
            false_positive_rate: (judged_honest > 0).then(|| located_honest as f64 / judged_honest as f64),
            locator: locator.as_ref().map(|l| l.locator.to_owned()),
            refits: locator.as_ref().map_or(0, |l| l.refits),
            suspected: locator.as_ref().map_or_else(Vec::new, |l| l.suspected.clone()),
            partial_refits: locator.as_ref().map_or_else(Vec::new, |l| l.partial_refits.clone()),
            partial_calibrated: locator.as_ref().map_or_else(Vec::new, |l| l.partial_calibrated.clone()),
            suspected_workers: locator.as_ref().map_or_else(Vec::new, |l| l.suspected_workers.clone()),
            short_positions: locator.map_or_else(Vec::new, |l| l.short_positions),
        };
        report.per_worker = stats.workers;
        report.slow_batches = stats.slow_batches;
        reports.push(report);
    }
    Ok(reports)
}

/// One scheme's workers for one run.
enum Pool {
    Local(Vec<(Arc<super::LocalWorker>, ServedModel)>),
    Remote(Vec<Arc<RemoteWorker>>),
}

impl Pool {
    /// `kind`'s pool; its local workers lie (where the plan says) by `config.attack`.
    fn start(
        workers: &Workers,
        (kind, config): (SchemeKind, &ServeBenchConfig),
        placement: Option<&Placement>,
        count: usize,
        output_len: usize,
    ) -> Pool {
        match (workers, placement) {
            (Workers::Local { devices, replica }, Some(placement)) => {
                let tamper = |w: usize| config.attack.tamper(config.seed.wrapping_add(w as u64));
                Pool::Local(local_workers(devices, placement, 4096, |w, d| replica(kind, w, d), tamper))
            }
            (Workers::Remote { endpoints, input_shape, timeout, concurrency }, _) => Pool::Remote(
                endpoints[..count]
                    .iter()
                    .enumerate()
                    .map(|(i, endpoint)| {
                        let config = RemoteConfig {
                            endpoint: endpoint.clone(),
                            input_shape: input_shape.clone(),
                            output_len,
                            timeout: *timeout,
                            concurrency: *concurrency,
                            capacity: 4096,
                        };
                        Arc::new(RemoteWorker::connect(i, config))
                    })
                    .collect(),
            ),
            (Workers::Local { .. }, None) => unreachable!("local runs are placed"),
        }
    }

    fn workers(&self) -> Vec<Arc<dyn Worker>> {
        match self {
            Pool::Local(pool) => pool.iter().map(|(w, _)| w.clone() as Arc<dyn Worker>).collect(),
            Pool::Remote(pool) => pool.iter().map(|w| w.clone() as Arc<dyn Worker>).collect(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Pool::Local(pool) => pool.len(),
            Pool::Remote(pool) => pool.len(),
        }
    }

    /// Time the workers spent serving: busy replicas, or requests in flight to servers.
    fn busy_seconds(&self) -> f64 {
        match self {
            Pool::Local(pool) => pool.iter().map(|(w, _)| w.busy().as_secs_f64()).sum(),
            Pool::Remote(pool) => pool.iter().map(|w| w.busy().as_secs_f64()).sum(),
        }
    }
}

/// Rows per second the pool's replicas compute when each runs forward passes of `rows` rows
/// back to back, all at once, with no coordinator (input on the device, answers read back).
fn bare_forward_qps(
    pool: &[(Arc<super::LocalWorker>, ServedModel)],
    devices: &[Device],
    placement: &Placement,
    inputs: &[Vec<f32>],
    rows: usize,
) -> f64 {
    const PASSES: usize = 20;
    let d = inputs[0].len();
    let batch: Vec<f32> = (0..rows).flat_map(|i| inputs[i % inputs.len()].iter().copied()).collect();
    // All replicas at once, as when serving; each warms up (a new batch size may compile
    // kernels) and then times its own passes, so the rate is the sum of theirs.
    let barrier = std::sync::Barrier::new(pool.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = pool
            .iter()
            .enumerate()
            .map(|(w, (_, model))| {
                let (device, batch, barrier) = (&devices[placement.device_of(w)], &batch, &barrier);
                s.spawn(move || {
                    let input = Tensor::<2>::from_data(TensorData::new(batch.clone(), [rows, d]), device);
                    let _ = model.forward(input.clone()).try_into_data();
                    barrier.wait();
                    let start = Instant::now();
                    let done = (0..PASSES).filter(|_| model.forward(input.clone()).try_into_data().is_ok()).count();
                    (done * rows) as f64 / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

/// What one scheme's run produced.
struct Outcome {
    /// Per query: latency and result (`None`: refused at admission).
    results: Vec<Option<(Duration, Result<super::Answer, ServeError>)>>,
    elapsed: Duration,
}

/// Submits every query by `config.arrivals` and waits for every answer.
fn drive(
    scheme: &dyn Scheme,
    config: &ServeBenchConfig,
    inputs: &[Vec<f32>],
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Outcome> {
    let n = config.queries;
    let mut rng = StdRng::seed_from_u64(config.seed ^ 0x5eed);
    let gap = match config.arrivals {
        Arrivals::Poisson { rate_qps } => Some(Exp::new(rate_qps)?),
        Arrivals::Closed { .. } => None,
    };
    let limit = match config.arrivals {
        Arrivals::Closed { concurrency } => concurrency.max(1),
        Arrivals::Poisson { .. } => usize::MAX,
    };
    let mut results: Vec<Option<(Duration, Result<super::Answer, ServeError>)>> = (0..n).map(|_| None).collect();
    let mut outstanding: Vec<(usize, Instant, Ticket)> = Vec::new();
    let start = Instant::now();
    let mut next_arrival = start;
    let (mut submitted, mut done) = (0, 0);
    while done < n {
        // Submit what is due.
        while submitted < n && outstanding.len() < limit && Instant::now() >= next_arrival {
            let sent = Instant::now();
            match scheme.submit(inputs[submitted % inputs.len()].clone()) {
                Ok(ticket) => outstanding.push((submitted, sent, ticket)),
                Err(e) => {
                    results[submitted] = Some((Duration::ZERO, Err(e)));
                    done += 1;
                }
            }
            submitted += 1;
            if let Some(gap) = &gap {
                next_arrival += Duration::from_secs_f64(gap.sample(&mut rng));
            }
        }
        if outstanding.is_empty() {
            std::thread::sleep(next_arrival.saturating_duration_since(Instant::now()));
            continue;
        }
        // Wait for the next answer, or the next arrival.
        let mut select = Select::new();
        for (_, _, ticket) in &outstanding {
            select.recv(ticket);
        }
        let timeout = if submitted < n && outstanding.len() < limit {
            next_arrival.saturating_duration_since(Instant::now())
        } else {
            Duration::from_secs(60)
        };
        let Ok(operation) = select.select_timeout(timeout) else { continue };
        let slot = operation.index();
        let result = operation.recv(&outstanding[slot].2);
        drop(select);
        let (query, sent, _) = outstanding.swap_remove(slot);
        let result = result.map_err(|_| anyhow::anyhow!("a scheme dropped query {query}"))?;
        results[query] = Some((sent.elapsed(), result));
        done += 1;
        // Batches answer many queries at once: collect every answer already there in one sweep
        // rather than one select over all outstanding tickets per answer.
        let mut i = 0;
        while i < outstanding.len() {
            match outstanding[i].2.try_recv() {
                Ok(result) => {
                    let (query, sent, _) = outstanding.swap_remove(i);
                    results[query] = Some((sent.elapsed(), result));
                    done += 1;
                }
                Err(crossbeam_channel::TryRecvError::Empty) => i += 1,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    anyhow::bail!("a scheme dropped query {}", outstanding[i].0)
                }
            }
        }
        progress(done);
    }
    Ok(Outcome { results, elapsed: start.elapsed() })
}

impl SchemeReport {
    fn with_percentiles(mut self) -> Self {
        (self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms) =
            (self.percentile(0.5), self.percentile(0.9), self.percentile(0.99), self.percentile(0.999));
        self
    }

    /// The `p` quantile of the answered queries' latency, in ms (NaN with no answers).
    pub fn percentile(&self, p: f64) -> f64 {
        let n = self.latencies_ms.len();
        if n == 0 {
            return f64::NAN;
        }
        self.latencies_ms[((n as f64 * p) as usize).min(n - 1)]
    }
}

impl Outcome {
    fn report(&self, scheme: &str, workers: usize, worker_seconds: f64, labels: &[u8]) -> SchemeReport {
        let mut latencies: Vec<f64> = Vec::new();
        let (mut answered, mut errors, mut correct, mut approximate) = (0, 0, 0, 0);
        for (i, result) in self.results.iter().enumerate() {
            match result {
                Some((latency, Ok(answer))) => {
                    answered += 1;
                    approximate += usize::from(answer.approximate);
                    latencies.push(latency.as_secs_f64() * 1e3);
                    let predicted =
                        answer.output.iter().enumerate().fold(0, |b, (c, &v)| if v > answer.output[b] { c } else { b });
                    correct += usize::from(predicted == usize::from(labels[i % labels.len()]));
                }
                _ => errors += 1,
            }
        }
        latencies.sort_by(f64::total_cmp);
        SchemeReport {
            scheme: scheme.into(),
            path: String::new(),
            max_batch: 0,
            seed: 0,
            max_queue_delay_ms: f64::NAN,
            workers,
            p50_ms: f64::NAN,
            p90_ms: f64::NAN,
            p99_ms: f64::NAN,
            p999_ms: f64::NAN,
            throughput_qps: answered as f64 / self.elapsed.as_secs_f64(),
            bare_forward_qps: f64::NAN,
            worker_seconds,
            device_seconds_per_1000: if answered > 0 { 1e3 * worker_seconds / answered as f64 } else { f64::NAN },
            decode_us_per_batch: 0.0,
            hedged_requests: 0,
            covered_parts: 0,
            grace_expired: 0,
            accuracy: if answered > 0 { correct as f64 / answered as f64 } else { 0.0 },
            queries: self.results.len(),
            answered,
            errors,
            approximate,
            per_worker: Vec::new(),
            latencies_ms: latencies,
            slow_batches: Vec::new(),
            byzantine: ByzantineBooks::default(),
        }
        .with_percentiles()
    }
}

/// The median and range of one figure over repeated runs.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (NaN ones left out); `None` when none is left.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        };
        Some(Spread { median, min: values[0], max: values[n - 1] })
    }
}

/// One scheme over runs of the same workload with different seeds (`serve-bench --repeat`):
/// a tail statistic is a handful of queries, so one run's can be the seed's more than the
/// scheme's. Each ratio to uncoded is taken within a run, then spread over the runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RepeatedReport {
    pub scheme: String,
    pub seeds: Vec<u64>,
    pub p50_ms: Option<Spread>,
    pub p999_ms: Option<Spread>,
    /// p99.9 - p50.
    pub tail_ms: Option<Spread>,
    /// Uncoded's p99.9 - p50 over this scheme's, per run: how many times smaller its tail is.
    pub tail_smaller_than_uncoded: Option<Spread>,
    pub throughput_qps: Option<Spread>,
    pub worker_seconds: Option<Spread>,
    /// This scheme's worker-seconds over uncoded's, per run.
    pub work_vs_uncoded: Option<Spread>,
    pub accuracy: Option<Spread>,
    /// Queries not answered, over all runs.
    pub errors: usize,
    /// Every run's report, in the order run.
    pub runs: Vec<SchemeReport>,
}

/// Each scheme's [`RepeatedReport`] over `runs` (each a [`run`]'s reports), in the order the
/// first run reports them.
pub fn summarize(runs: &[Vec<SchemeReport>]) -> Vec<RepeatedReport> {
    let tail = |r: &SchemeReport| r.p999_ms - r.p50_ms;
    let schemes: Vec<String> =
        runs.first().map(|first| first.iter().map(|r| r.scheme.clone()).collect()).unwrap_or_default();
    schemes
        .into_iter()
        .map(|scheme| {
            // Per run: this scheme's report and, if it ran, uncoded's.
            let pairs: Vec<(&SchemeReport, Option<&SchemeReport>)> = runs
                .iter()
                .filter_map(|run| {
                    let find = |name: &str| run.iter().find(|r| r.scheme == name);
                    Some((find(&scheme)?, find(SchemeKind::Uncoded.name())))
                })
                .collect();
            let spread = |figure: fn(&SchemeReport) -> f64| Spread::of(pairs.iter().map(|(r, _)| figure(r)));
            let against = |ratio: &dyn Fn(&SchemeReport, &SchemeReport) -> f64| {
                Spread::of(pairs.iter().filter_map(|(r, uncoded)| uncoded.map(|u| ratio(r, u))))
            };
            RepeatedReport {
                seeds: pairs.iter().map(|(r, _)| r.seed).collect(),
                p50_ms: spread(|r| r.p50_ms),
                p999_ms: spread(|r| r.p999_ms),
                tail_ms: spread(tail),
                tail_smaller_than_uncoded: against(&|r, u| tail(u) / tail(r)),
                throughput_qps: spread(|r| r.throughput_qps),
                worker_seconds: spread(|r| r.worker_seconds),
                work_vs_uncoded: against(&|r, u| r.worker_seconds / u.worker_seconds),
                accuracy: spread(|r| r.accuracy),
                errors: pairs.iter().map(|(r, _)| r.errors).sum(),
                runs: pairs.iter().map(|(r, _)| (*r).clone()).collect(),
                scheme,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::{Latency, WorkerFaults};

    fn report(scheme: &str, seed: u64, (p50, p999): (f64, f64), worker_seconds: f64) -> SchemeReport {
        SchemeReport {
            scheme: scheme.into(),
            path: "batched".into(),
            max_batch: 8,
            seed,
            max_queue_delay_ms: 10.0,
            workers: 5,
            p50_ms: p50,
            p90_ms: p50,
            p99_ms: p999,
            p999_ms: p999,
            throughput_qps: 100.0,
            bare_forward_qps: 1000.0,
            worker_seconds,
            device_seconds_per_1000: 1.0,
            decode_us_per_batch: 0.0,
            hedged_requests: 0,
            covered_parts: 0,
            grace_expired: 0,
            accuracy: 0.9,
            queries: 10,
            answered: 9,
            errors: 1,
            approximate: 0,
            per_worker: Vec::new(),
            latencies_ms: vec![p50, p999],
            slow_batches: Vec::new(),
            byzantine: ByzantineBooks::default(),
        }
    }

    #[test]
    fn liars_are_placed_by_the_seed_and_lie_as_often_as_asked() {
        let plan = FaultPlan {
            latency: Latency::Constant { ms: 1.0 },
            workers: vec![WorkerFaults { slowdown: 3.0, ..WorkerFaults::NONE }],
            random_slowdown: None,
        };
        let liars = Liars { count: 2, probability: 0.25 };
        let (placed, chosen) = liars.place(&plan, 10, 7);
        assert_eq!(chosen.len(), 2);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]) && chosen.iter().all(|&w| w < 10));
        for w in 0..10 {
            let expected = if chosen.contains(&w) { 0.25 } else { 0.0 };
            assert_eq!(placed.worker(w).byzantine_probability, expected, "worker {w}");
        }
        // The plan's own faults stay.
        assert_eq!(placed.worker(0).slowdown, 3.0);
        assert_eq!(liars.place(&plan, 10, 7).1, chosen, "the same seed, the same liars");
        let others: Vec<Vec<usize>> = (8..16).map(|seed| liars.place(&plan, 10, seed).1).collect();
        assert!(others.iter().any(|o| *o != chosen), "other seeds, other liars");
        assert_eq!(Liars::NONE.place(&plan, 10, 7), (plan.clone(), Vec::new()));
        // A plan's own liars are liars too.
        let mut lying = plan.clone();
        lying.workers.push(WorkerFaults { byzantine_probability: 0.5, ..WorkerFaults::NONE });
        assert_eq!(Liars::NONE.place(&lying, 10, 7).1, vec![1]);
    }

    #[test]
    fn a_spread_is_the_median_and_range_of_the_values_that_are_numbers() {
        assert_eq!(Spread::of([3.0, 1.0, 2.0]), Some(Spread { median: 2.0, min: 1.0, max: 3.0 }));
        assert_eq!(Spread::of([4.0, 1.0, f64::NAN, 2.0, 8.0]), Some(Spread { median: 3.0, min: 1.0, max: 8.0 }));
        assert_eq!(Spread::of([f64::NAN]), None);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn repeated_runs_give_each_scheme_its_spread_and_its_ratios_to_uncoded_within_each_run() {
        // Uncoded's tail is 40 then 90 ms; ApproxIFER's 10 then 30: 4x and 3x smaller. Pooled
        // medians (65 / 20 = 3.25x) would be another figure.
        let runs = vec![
            vec![report("uncoded", 1, (10.0, 50.0), 10.0), report("approxifer", 1, (12.0, 22.0), 12.0)],
            vec![report("uncoded", 2, (10.0, 100.0), 20.0), report("approxifer", 2, (14.0, 44.0), 30.0)],
            vec![report("uncoded", 3, (10.0, 60.0), 10.0)],
        ];
        let summaries = summarize(&runs);
        let names: Vec<&str> = summaries.iter().map(|s| s.scheme.as_str()).collect();
        assert_eq!(names, ["uncoded", "approxifer"]);
        let (uncoded, coded) = (&summaries[0], &summaries[1]);
        assert_eq!(uncoded.seeds, [1, 2, 3]);
        assert_eq!(coded.seeds, [1, 2], "a run without the scheme is not counted");
        assert_eq!(uncoded.tail_ms, Some(Spread { median: 50.0, min: 40.0, max: 90.0 }));
        assert_eq!(coded.tail_ms, Some(Spread { median: 20.0, min: 10.0, max: 30.0 }));
        assert_eq!(coded.tail_smaller_than_uncoded, Some(Spread { median: 3.5, min: 3.0, max: 4.0 }));
        assert_eq!(coded.work_vs_uncoded, Some(Spread { median: 1.35, min: 1.2, max: 1.5 }));
        assert_eq!(uncoded.tail_smaller_than_uncoded.map(|s| (s.min, s.max)), Some((1.0, 1.0)));
        assert_eq!((uncoded.errors, coded.errors), (3, 2));
        assert_eq!(coded.runs.iter().map(|r| r.seed).collect::<Vec<_>>(), [1, 2]);
    }
}
