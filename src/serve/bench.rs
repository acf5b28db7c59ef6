//! `serve-bench`: every scheme on the same workload (arrivals, queries, faults, seed), each on
//! its own pool of local workers, measured from submission to answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Select;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Exp};

use super::coordinator::{Codec, ServeError, Ticket};
use super::faults::FaultPlan;
use super::scheme::{Scheme, SchemeConfig, SchemeKind};
use super::worker::{HostModel, LocalWorker, Worker};

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
    pub max_wait: Duration,
    /// Hedged requests send a backup after this long; `None`: the uncoded run's p95.
    pub hedge_after: Option<Duration>,
    pub copies: usize,
    /// Where ApproxIFER's coordinator codes its groups.
    pub codec: Codec,
    /// When ApproxIFER re-sends a group's unanswered coded queries to workers that answered.
    pub coded_hedge_after: Option<Duration>,
}

/// One scheme's figures; the JSON of `serve-bench --json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SchemeReport {
    pub scheme: String,
    pub workers: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub throughput_qps: f64,
    pub worker_seconds: f64,
    /// Fraction of answered queries whose argmax is the label.
    pub accuracy: f64,
    pub queries: usize,
    pub answered: usize,
    pub errors: usize,
    /// Answers decoded rather than computed on the query itself.
    pub approximate: usize,
    /// Every answered query's latency, sorted (for the CDF plot).
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
}

/// Runs uncoded, replication, hedged and ApproxIFER (N = K + 1, S = 1) on `inputs` (cycled),
/// scoring answers against `labels`. `progress(done, total)` counts answered queries.
pub fn run(
    config: &ServeBenchConfig,
    model: impl Fn() -> HostModel,
    inputs: &[Vec<f32>],
    labels: &[u8],
    output_len: usize,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Vec<SchemeReport>> {
    anyhow::ensure!(!inputs.is_empty() && inputs.len() == labels.len(), "inputs and labels must match");
    config.plan.validate()?;
    let k = config.k;
    let input_len = inputs[0].len();
    let schemes = [SchemeKind::Uncoded, SchemeKind::Replication, SchemeKind::Hedged, SchemeKind::Approxifer];
    let total = schemes.len() * config.queries;
    let mut settings = SchemeConfig {
        k,
        stragglers: 1,
        byzantine: 0,
        locator: crate::kernels::Locator::default(),
        copies: config.copies,
        hedge_after: Duration::ZERO,
        coded_hedge_after: config.coded_hedge_after,
        input_len,
        output_len,
        max_wait: config.max_wait,
        deadline: config.deadline,
        capacity: config.queries.max(1),
        faults: Some((config.plan.clone(), config.seed)),
        codec: config.codec.clone(),
    };
    let mut reports: Vec<SchemeReport> = Vec::new();
    for (i, kind) in schemes.into_iter().enumerate() {
        // Uncoded runs first, so its p95 is known when hedging needs it.
        settings.hedge_after = config.hedge_after.unwrap_or_else(|| {
            let p95 = reports.first().map_or(0.0, |r| r.percentile(0.95));
            Duration::from_secs_f64(p95.max(0.0) / 1e3)
        });
        let pool = kind.workers(&settings);
        let local: Vec<Arc<LocalWorker>> = (0..pool).map(|w| Arc::new(LocalWorker::start(w, model(), 4096))).collect();
        let workers: Vec<Arc<dyn Worker>> = local.iter().map(|w| w.clone() as Arc<dyn Worker>).collect();
        let scheme = kind.start(&settings, workers)?;
        let done_before = i * config.queries;
        let outcome = drive(scheme.as_ref(), config, inputs, |done| progress(done_before + done, total))?;
        scheme.shutdown(); // everything accepted has been answered
        let worker_seconds = local.iter().map(|w| w.busy().as_secs_f64()).sum();
        reports.push(outcome.report(kind.name(), pool, worker_seconds, labels));
    }
    Ok(reports)
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
        let (query, sent, _) = outstanding.swap_remove(slot);
        let result = result.map_err(|_| anyhow::anyhow!("a scheme dropped query {query}"))?;
        results[query] = Some((sent.elapsed(), result));
        done += 1;
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
            workers,
            p50_ms: f64::NAN,
            p90_ms: f64::NAN,
            p99_ms: f64::NAN,
            p999_ms: f64::NAN,
            throughput_qps: answered as f64 / self.elapsed.as_secs_f64(),
            worker_seconds,
            accuracy: if answered > 0 { correct as f64 / answered as f64 } else { 0.0 },
            queries: self.results.len(),
            answered,
            errors,
            approximate,
            latencies_ms: latencies,
        }
        .with_percentiles()
    }
}
