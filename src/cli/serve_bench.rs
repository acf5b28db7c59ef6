//! `approxifer serve-bench`: uncoded, replication, hedged requests and ApproxIFER on the same
//! workload, with injected stragglers, on batched local workers running the embedded model on
//! the box's devices. Also the main command's quick run.

use std::io::Write;
use std::path::PathBuf;

use burn::tensor::Device;
use clap::{Args, Parser, ValueEnum};

use super::model::ModelArgs;
use super::serve::LocatorArgs;
use super::workers::{RemoteArgs, WorkerArgs};
use super::{CodecArg, ms};
use crate::attack::Attack;
use crate::data::{self, Dataset, Images, Split};
use crate::models::Architecture;
use crate::serve::bench::{
    Arrivals, Liars, RepeatedReport, SCHEMES, SchemeReport, ServeBenchConfig, Spread, Workers, run, summarize,
};
use crate::serve::{FaultPlan, Latency, RandomSlowdown, SchemeKind};

/// How workers take their queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Path {
    /// Dynamic batching: one forward pass per batch of up to --max-batch groups (queries).
    Batched,
    /// One group (one query, for the baselines) per forward pass: --max-batch 1.
    PerQuery,
}

#[derive(Debug, Args)]
pub(super) struct ServeBenchArgs {
    /// Queries per coded group (ApproxIFER uses K + 1 workers, uncoded and hedged K,
    /// replication copies x K).
    #[arg(long = "k", default_value_t = 4)]
    k: usize,
    /// Remote workers (they must serve the hosted model); each scheme uses the first N.
    #[command(flatten)]
    remote: RemoteArgs,
    /// The hosted model [default: the embedded LeNet-5 and its Fashion-MNIST sample].
    #[command(flatten)]
    model: ModelArgs,
    /// Where the queries and their labels come from: this dataset's test split (from
    /// scripts/fetch-data.sh) [default: the embedded sample of 1000 Fashion-MNIST test images;
    /// with --model digit-cnn, MNIST]
    #[arg(long, value_enum)]
    dataset: Option<Dataset>,
    /// The data directory [default: $APPROXIFER_DATA, else ./data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Queries per scheme.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// The schemes to run, comma-separated (they run in the order uncoded, replication,
    /// hedged, approxifer) [default: all]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    schemes: Vec<SchemeKind>,
    /// Open-loop Poisson arrivals at this rate [default: half the uncoded pool's capacity]
    #[arg(long, value_name = "QPS", conflicts_with = "closed")]
    rate: Option<f64>,
    /// Closed loop with this many queries outstanding, instead of Poisson arrivals.
    #[arg(long, value_name = "CONCURRENCY")]
    closed: Option<usize>,
    /// Service time injected per batch on top of the model's own, in ms (0: the model alone).
    #[arg(long, default_value_t = 5.0)]
    latency_ms: f64,
    /// Probability per dispatch (a batch) that one random worker of it is slow.
    #[arg(long, default_value_t = 0.05)]
    slow_probability: f64,
    /// How much slower that worker is.
    #[arg(long, default_value_t = 10.0)]
    slow_factor: f64,
    /// A fault plan file (TOML, or JSON if named *.json) instead of the three options above;
    /// the README shows one.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    /// Wrong answers ApproxIFER finds and removes per group: its code grows to N = 2K + 2A
    /// (S = 1). The other schemes have no defence against liars.
    #[arg(long, value_name = "A", default_value_t = 0)]
    byzantine: usize,
    /// Workers of every scheme's pool that lie (chosen by the seed) [default: --byzantine;
    /// with --faults, the plan's byzantine_probability says who lies]
    #[arg(long, value_name = "M", conflicts_with = "faults")]
    liars: Option<usize>,
    /// The probability that a liar answers a request wrongly (1: every answer).
    #[arg(long, value_name = "P", default_value_t = 1.0)]
    lie_probability: f64,
    /// How a liar alters each row of its answer: gaussian-SIGMA, sign-flip, random, constant,
    /// targeted, colluding, rotate or swap-top (also for a --faults plan's
    /// byzantine_probability).
    #[arg(long, default_value = "sign-flip")]
    attack: Attack,
    #[command(flatten)]
    locating: LocatorArgs,
    /// ParM's parity model for the hosted model at --k (what `approxifer train-parity`
    /// writes) [default: the shipped one for the embedded model; ParM is left out where
    /// there is none]
    #[arg(long, value_name = "FILE")]
    parity: Option<PathBuf>,
    /// Copies per query for replication.
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// ApproxIFER re-sends a group's unanswered coded queries to workers that have answered
    /// after at least this many ms (three base service times by default; later when recent
    /// batches took longer: twice their median; 0: never); once a worker has been on one
    /// request for 3/4 of that delay, its coded queries of the next batches also go to other
    /// workers (0: never).
    #[arg(long, value_name = "MS", default_value_t = 15.0)]
    coded_hedge_ms: f64,
    /// ApproxIFER's and ParM's batches wait this long for queries [default:
    /// --max-queue-delay-ms]. A coded batch costs every worker of a group a forward pass, so at
    /// low load a longer delay makes fewer, fuller batches: less work for a later p50.
    #[arg(long, value_name = "MS")]
    coded_queue_delay_ms: Option<f64>,
    /// Once a coded batch can be decoded (N - S answers), wait up to this fraction of the
    /// recent batches' median completion time for its other answers: decoded from every
    /// answer, a group is a better approximation; a straggler's batch pays the wait (0:
    /// decode at the N - S-th answer).
    #[arg(long, value_name = "FRACTION", default_value_t = crate::serve::DEFAULT_DECODE_GRACE)]
    decode_grace: f64,
    /// Hedged requests send a backup after this many ms [default: the uncoded run's p95]
    #[arg(long, value_name = "MS")]
    hedge_after_ms: Option<f64>,
    #[command(flatten)]
    workers: WorkerArgs,
    /// How workers take their queries: batched, or one query (one group) per forward pass.
    #[arg(long, value_enum, default_value_t = Path::Batched)]
    path: Path,
    #[arg(long, default_value_t = 2000.0)]
    deadline_ms: f64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Run the whole workload this many times, with seeds --seed, --seed + 1, ..., and report
    /// each figure's median and range over the runs (and each run's ratios to uncoded): a p99.9
    /// is a handful of queries, so one run's tail can be the seed's more than the scheme's.
    #[arg(long, value_name = "R", default_value_t = 1)]
    repeat: u64,
    /// Where ApproxIFER's coordinator decodes its batches (gpu: the adapter in
    /// APPROXIFER_ADAPTER, else the best one); workers encode on their own devices.
    #[arg(long, value_enum, default_value_t = CodecArg::Cpu)]
    codec: CodecArg,
    /// Also draw the latency CDF of every scheme into this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Print one JSON object per scheme instead of a table.
    #[arg(long)]
    json: bool,
    /// Print the timelines of ApproxIFER's slowest batches (up to 20 per run) that took at
    /// least this many ms, dispatch to decoding, on stderr: when each worker answered, when the
    /// hedge was due and where it went. What a tail is made of.
    #[arg(long, value_name = "MS")]
    trace_slow_ms: Option<f64>,
}

/// The most runs `--repeat` takes (each is a whole workload: more is a typo).
const MAX_REPEAT: u64 = 10_000;

/// What the main command runs: a short serve-bench of every scheme on the embedded model, on
/// the best device present, with one random worker 10x slower on 5 % of dispatches.
pub(super) fn quick() -> ServeBenchArgs {
    #[derive(Parser)]
    struct Quick {
        #[command(flatten)]
        args: ServeBenchArgs,
    }
    Quick::parse_from(["approxifer", "--queries", "3000", "--rate", "600"]).args
}

pub(super) fn run_cmd(args: &ServeBenchArgs, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.k >= 1 && args.queries >= 1 && args.copies >= 1,
        "--k, --queries and --copies must be at least 1"
    );
    anyhow::ensure!((1..=MAX_REPEAT).contains(&args.repeat), "--repeat must be between 1 and {MAX_REPEAT}");
    // Twice the service time keeps batch formation from dominating the tail at low load.
    let max_queue_delay = args.workers.check((2.0 * args.latency_ms).max(1.0))?;
    let max_batch = if args.path == Path::PerQuery { 1 } else { args.workers.max_batch };
    let plan = match &args.faults {
        Some(path) => FaultPlan::from_file(path)?,
        None => FaultPlan {
            latency: Latency::Constant { ms: args.latency_ms },
            workers: Vec::new(),
            random_slowdown: Some(RandomSlowdown { probability: args.slow_probability, factor: args.slow_factor }),
        },
    };
    plan.validate()?;
    let arrivals = match (args.closed, args.rate) {
        (Some(concurrency), _) => Arrivals::Closed { concurrency },
        (None, Some(rate_qps)) => {
            anyhow::ensure!(rate_qps.is_finite() && rate_qps > 0.0, "--rate must be positive");
            Arrivals::Poisson { rate_qps }
        }
        // Without injected service time the model's own cost sets the capacity: saturate it.
        (None, None) if args.latency_ms == 0.0 => {
            Arrivals::Closed { concurrency: max_batch.saturating_mul(args.k).saturating_mul(2) }
        }
        (None, None) => Arrivals::Poisson { rate_qps: 0.5 * args.k as f64 * 1e3 / args.latency_ms },
    };
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.lie_probability),
        "--lie-probability must be in [0, 1], not {}",
        args.lie_probability
    );
    let (locator, partial_calibrations, learning) = args.locating.build(args.k)?;
    let mut config = ServeBenchConfig {
        k: args.k,
        queries: args.queries,
        arrivals,
        plan,
        seed: args.seed,
        deadline: ms(args.deadline_ms, "--deadline-ms")?,
        max_batch,
        max_queue_delay,
        coded_queue_delay: args.coded_queue_delay_ms.map(|v| ms(v, "--coded-queue-delay-ms")).transpose()?,
        decode_grace: args.decode_grace,
        workers_per_device: args.workers.workers_per_device,
        hedge_after: args.hedge_after_ms.map(|v| ms(v, "--hedge-after-ms")).transpose()?,
        copies: args.copies,
        codec: args.codec.build(&crate::kernels::gpu::AdapterChoice::from_env())?,
        coded_hedge_after: Some(ms(args.coded_hedge_ms, "--coded-hedge-ms")?).filter(|d| !d.is_zero()),
        schemes: SCHEMES.into_iter().filter(|s| args.schemes.is_empty() || args.schemes.contains(s)).collect(),
        trace_slower_than: args.trace_slow_ms.map(|v| ms(v, "--trace-slow-ms")).transpose()?,
        byzantine: args.byzantine,
        locator,
        partial_calibrations,
        learning,
        liars: Liars {
            count: args.liars.unwrap_or(if args.faults.is_some() { 0 } else { args.byzantine }),
            probability: args.lie_probability,
        },
        attack: args.attack,
    };
    config.check_liars()?;
    let remote = !args.remote.urls.is_empty() || args.remote.file.is_some();
    anyhow::ensure!(
        config.liars.count == 0 || !remote,
        "--liars are local workers that lie; remote servers answer as they do (--liars 0)"
    );
    anyhow::ensure!(
        config.hedge_after.is_some()
            || !config.schemes.contains(&SchemeKind::Hedged)
            || config.schemes.contains(&SchemeKind::Uncoded),
        "hedged requests back up after the uncoded run's p95: run uncoded too, or give --hedge-after-ms"
    );
    let (dataset, sample) = queries(args)?;
    let plot = args.plot.as_deref().map(super::output::Staged::new).transpose()?;
    // ParM runs where it can: local workers (they answer logits) and a parity model for K.
    let explicit = |kind| args.schemes.contains(&kind);
    let parm_without = if remote {
        Some("it needs workers that answer logits; remote servers answer probabilities".to_string())
    } else if args.parity.is_none() && args.model.architecture.is_some() {
        Some("no parity model shipped for this model; --parity FILE names one (approxifer train-parity)".to_string())
    } else if args.parity.is_none()
        && !crate::embedded::parity_ks(crate::embedded::ARCHITECTURE, crate::embedded::DATASET).contains(&args.k)
    {
        Some(format!("no parity model shipped for K = {}; --parity FILE names one (approxifer train-parity)", args.k))
    } else {
        None
    };
    if let (Some(why), true) = (&parm_without, config.schemes.contains(&SchemeKind::Parm)) {
        anyhow::ensure!(!explicit(SchemeKind::Parm), "parm: {why}");
        eprintln!("parm: not run ({why})");
        config.schemes.retain(|&s| s != SchemeKind::Parm);
    }
    // Workers run the hosted model (the embedded LeNet-5 unless --model), a replica each on
    // its device (or on remote servers); the queries are the embedded Fashion-MNIST sample or
    // a dataset's test split.
    let architecture = args.model.architecture();
    let endpoints = args.remote.endpoints(&args.model.default_name())?;
    let shape = [1, sample.rows, sample.cols];
    let host = Device::flex();
    let inputs: Vec<Vec<f32>> = (0..sample.len())
        .map(|i| {
            let t = crate::train::image_tensor(&sample, i..i + 1, dataset, &host);
            t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()
        })
        .collect();
    let local = if endpoints.is_empty() {
        let (devices, notices) = args.workers.devices()?;
        config.placements(devices.len())?;
        notices.iter().for_each(|line| eprintln!("{line}"));
        let model = args.model.load(&devices[0])?;
        let parity = if config.schemes.contains(&SchemeKind::Parm) {
            Some(match &args.parity {
                Some(path) => crate::models::load(architecture, path, &devices[0])?,
                None => crate::embedded::parity(
                    crate::embedded::ARCHITECTURE,
                    crate::embedded::DATASET,
                    args.k,
                    &devices[0],
                )
                .transpose()?
                .ok_or_else(|| anyhow::anyhow!("no parity model for K = {}", args.k))?,
            })
        } else {
            None
        };
        Some((devices, model, parity))
    } else {
        eprintln!("approxifer: remote workers: injected faults do not reach them (slow or stop the servers instead)");
        None
    };
    // ParM's workers answer logits, which its subtraction decodes; its last runs the parity.
    let replica = |kind: SchemeKind, worker: usize, device: &Device| {
        let (_, model, parity) = local.as_ref().expect("replicas are made for local workers only");
        match (kind, parity) {
            (SchemeKind::Parm, Some(parity)) if worker == args.k => {
                crate::serve::replica::classifier_logits(parity, device, shape)
            }
            (SchemeKind::Parm, _) => crate::serve::replica::classifier_logits(model, device, shape),
            _ => crate::serve::replica::classifier(model, device, shape),
        }
    };
    let workers = match &local {
        Some((devices, ..)) => Workers::Local { devices, replica: &replica },
        None => Workers::Remote {
            endpoints: &endpoints,
            input_shape: shape.to_vec(),
            timeout: config.deadline,
            concurrency: args.remote.worker_concurrency,
        },
    };
    let coded_delay = match config.coded_queue_delay {
        Some(delay) => format!(" ({} ms for the coded schemes)", delay.as_secs_f64() * 1e3),
        None => String::new(),
    };
    eprintln!(
        "approxifer: {} queries per scheme to {} on {} ({} path, {} per batch, {} ms queue delay{}, \
         {} ms injected per batch); {:?}",
        args.queries,
        match args.model.architecture {
            Some(architecture) => architecture.name().to_string(),
            None => format!("the embedded {}", architecture.name()),
        },
        dataset.name(),
        if max_batch == 1 { "per-query" } else { "batched" },
        max_batch,
        max_queue_delay.as_secs_f64() * 1e3,
        coded_delay,
        args.latency_ms,
        arrivals
    );
    let seeds: Vec<u64> = (0..args.repeat).map(|r| args.seed.wrapping_add(r)).collect();
    let mut runs = Vec::with_capacity(seeds.len());
    for &seed in &seeds {
        if seeds.len() > 1 {
            eprintln!("approxifer: run {} of {} (seed {seed})", runs.len() + 1, seeds.len());
        }
        config.seed = seed;
        let bar = super::progress_bar(0, "queries");
        let reports = run(&config, &workers, &inputs, &sample.labels, crate::models::CLASSES, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        for (report, books) in reports.iter().map(|r| (r, &r.byzantine)) {
            if books.liars.is_empty() && books.located_liars + books.located_honest == 0 {
                continue;
            }
            let liars = books.liars.iter().map(usize::to_string).collect::<Vec<_>>().join(", ");
            let mut short = String::new();
            if !books.short_positions.is_empty() {
                short += &format!("; too few honest answers to learn from at positions {:?}", books.short_positions);
            }
            if !books.suspected.is_empty() {
                short += &format!("; fitted without positions {:?}, whose answers it removes first", books.suspected);
            }
            if !books.partial_refits.is_empty() {
                let (queries, refits): (Vec<usize>, Vec<u64>) = books.partial_refits.iter().copied().unzip();
                short += &format!("; for partial groups of {queries:?} queries, {refits:?} refits");
            }
            if !books.suspected_workers.is_empty() {
                short += &format!(
                    "; workers {:?} suspected over many batches, their answers removed from every group",
                    books.suspected_workers
                );
            }
            if !books.partial_calibrated.is_empty() {
                short += &format!("; partial groups of {:?} queries located calibrated", books.partial_calibrated);
            }
            let located = match &books.locator {
                Some(locator) => format!(
                    "; of {} groups decoded, the locator removed a liar's answer {} times and an honest worker's {} \
                     of {} judged (at the end: {locator}, {} refits from the traffic{short})",
                    books.decoded_groups, books.located_liars, books.located_honest, books.judged_honest, books.refits
                ),
                None => String::new(),
            };
            eprintln!("approxifer: {}: liars: workers [{liars}] of {}{located}", report.scheme, report.workers);
        }
        for report in reports.iter().filter(|r| !r.slow_batches.is_empty()) {
            eprintln!("approxifer: {}'s slowest batches (seed {seed}):", report.scheme);
            report.slow_batches.iter().for_each(|trace| eprintln!("  {trace}"));
        }
        runs.push(reports);
    }
    let pooled = if let [reports] = &runs[..] {
        if args.json {
            super::write_json_lines(reports, out)?;
        } else {
            write_table(reports, out)?;
        }
        reports.clone()
    } else {
        let summaries = summarize(&runs);
        if args.json {
            super::write_json_lines(&summaries, out)?;
        } else {
            write_summary(&summaries, out)?;
        }
        pooled_latencies(&summaries)
    };
    if let (Some(staged), Some(path)) = (plot, &args.plot) {
        crate::plot::latency_cdf_svg(&pooled, staged.path())?;
        staged.persist()?;
        eprintln!("approxifer: plot written to {}", path.display());
    }
    Ok(())
}

/// Per scheme, its first run's report holding every run's latencies: the CDF over all runs.
fn pooled_latencies(summaries: &[RepeatedReport]) -> Vec<SchemeReport> {
    let pooled = summaries.iter().filter_map(|summary| {
        let mut report = summary.runs.first()?.clone();
        report.latencies_ms = summary.runs.iter().flat_map(|r| r.latencies_ms.iter().copied()).collect();
        report.latencies_ms.sort_by(f64::total_cmp);
        Some(report)
    });
    pooled.collect()
}

/// The `--repeat` table: medians, with the range over the runs where it tells most.
fn write_summary(summaries: &[RepeatedReport], out: &mut impl Write) -> anyhow::Result<()> {
    let seeds = summaries.first().map(|s| &s.seeds[..]).unwrap_or(&[]);
    writeln!(
        out,
        "{} runs (seeds {}); medians over the runs, [min, max] where given; ratios to uncoded taken within each run",
        seeds.len(),
        seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    )?;
    writeln!(
        out,
        "{:<12} {:>8} {:>9} {:>24} {:>22} {:>10} {:>9} {:>20} {:>8} {:>7}",
        "scheme",
        "p50 ms",
        "p99.9 ms",
        "p99.9-p50 ms",
        "tail x smaller",
        "throughput",
        "worker s",
        "work / uncoded",
        "accuracy",
        "errors"
    )?;
    let median = |s: Option<Spread>| s.map_or(f64::NAN, |s| s.median);
    let range = |s: Option<Spread>, unit: &str| match s {
        Some(s) => format!("{:.2}{unit} [{:.2}, {:.2}]", s.median, s.min, s.max),
        None => "-".into(),
    };
    for s in summaries {
        writeln!(
            out,
            "{:<12} {:>8.2} {:>9.2} {:>24} {:>22} {:>10.1} {:>9.2} {:>20} {:>8.4} {:>7}",
            s.scheme,
            median(s.p50_ms),
            median(s.p999_ms),
            range(s.tail_ms, ""),
            range(s.tail_smaller_than_uncoded, "x"),
            median(s.throughput_qps),
            median(s.worker_seconds),
            range(s.work_vs_uncoded, "x"),
            median(s.accuracy),
            s.errors
        )?;
    }
    Ok(())
}

fn write_table(reports: &[SchemeReport], out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<12} {:>7} {:>8} {:>8} {:>8} {:>9} {:>10} {:>10} {:>10} {:>9} {:>8} {:>7}",
        "scheme",
        "workers",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "p99.9-p50",
        "throughput",
        "bare fwd/s",
        "worker s",
        "accuracy",
        "errors"
    )?;
    for r in reports {
        writeln!(
            out,
            "{:<12} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>10.2} {:>10.1} {:>10.0} {:>9.2} {:>8.4} {:>7}",
            r.scheme,
            r.workers,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.p999_ms - r.p50_ms,
            r.throughput_qps,
            r.bare_forward_qps,
            r.worker_seconds,
            r.accuracy,
            r.errors
        )?;
    }
    Ok(())
}

/// The queries and their labels: a dataset's test split where `--dataset` names one (or the
/// hosted model is the digit CNN, an MNIST model), else the embedded sample; and their dataset.
fn queries(args: &ServeBenchArgs) -> anyhow::Result<(Dataset, Images)> {
    let dataset = match (args.dataset, args.model.architecture) {
        (Some(dataset), _) => dataset,
        (None, Some(Architecture::DigitCnn)) => Dataset::Mnist,
        (None, Some(architecture)) => anyhow::bail!(
            "--model {}: say which dataset's test images are its queries (--dataset mnist or fashion-mnist)",
            architecture.name()
        ),
        (None, None) => return Ok((crate::embedded::DATASET, crate::embedded::sample())),
    };
    let dir = args.data.clone().unwrap_or_else(data::default_dir);
    Ok((dataset, data::load(&dir, dataset, Split::Test)?))
}
