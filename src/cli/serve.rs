//! `approxifer serve`: a model behind the Open Inference Protocol, through the batched coded
//! runtime (or a baseline, to compare), with local workers holding one model replica each on
//! the box's devices, or remote workers (any v2 server) on other processes and machines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Device;
use clap::Args;

use super::model::ModelArgs;
use super::workers::{RemoteArgs, WorkerArgs};
use super::{CodecArg, ms};
use crate::attack::Attack;
use crate::kernels::MaskPlacement;
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::privacy::DEFAULT_MASK_SIGMA;
use crate::kernels::{Calibration, Locator};
use crate::serve::Learning;
use crate::serve::http::{HttpConfig, ModelSpec, serve_v2};
use crate::serve::pool::{background_loads, local_workers};
use crate::serve::{FaultPlan, Placement, Privacy, RemoteConfig, RemoteWorker, SchemeConfig, SchemeKind, Worker};

/// `--locator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LocatorChoice {
    Calibrated,
    Robust,
    Paper,
}

impl LocatorChoice {
    fn name(self) -> &'static str {
        match self {
            LocatorChoice::Calibrated => "calibrated",
            LocatorChoice::Robust => "robust",
            LocatorChoice::Paper => "paper",
        }
    }
}

/// How a coded scheme with `--byzantine` finds wrong answers (`serve`, `serve-bench`).
#[derive(Debug, Args)]
pub(super) struct LocatorArgs {
    /// How wrong answers are found with --byzantine: calibrated (ours, learnt from the traffic
    /// less the answers it removes; it starts as robust, or from --calibration), robust (ours,
    /// nothing learnt) or paper.
    #[arg(long, value_enum, default_value_t = LocatorChoice::Calibrated)]
    locator: LocatorChoice,
    /// With --byzantine: start the calibrated locator from this calibration (what `approxifer
    /// calibrate` writes for the hosted model and code, with --nodes authors; with --partial,
    /// it also starts the partial groups' codes).
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
    /// With --byzantine: save every code's calibration learnt from traffic to this file after
    /// each fit, and start from it when it exists: a restarted service starts calibrated, for
    /// any model (remote engines' included), with no offline `approxifer calibrate`.
    #[arg(long, value_name = "FILE", conflicts_with = "calibration")]
    save_calibration: Option<PathBuf>,
    /// With --locator calibrated: refit after this many more groups (0: never learn,
    /// keep --calibration as it is). Each code learns its own, the full one and each partial
    /// group's (K' < K queries): its first calibration after a twentieth of these groups, then as
    /// its groups double, up to this. Up to A positions with no honest answers among them (a
    /// worker that always lies) are fitted without, and their answers removed first.
    #[arg(long, value_name = "GROUPS", default_value_t = Learning::default().refit_every)]
    refit_every: usize,
}

impl LocatorArgs {
    /// The locator to start from for codes of `k` queries, the calibrations of the partial
    /// groups' codes (a file from `calibrate --partial`), and how it learns from traffic.
    pub(super) fn build(&self, k: usize) -> anyhow::Result<(Locator, Vec<Arc<Calibration>>, Option<Learning>)> {
        anyhow::ensure!(
            self.calibration.is_none() || self.locator == LocatorChoice::Calibrated,
            "--calibration is the calibrated locator's; it does not go with --locator {}",
            self.locator.name()
        );
        let learns = self.locator == LocatorChoice::Calibrated && self.refit_every > 0;
        if let Some(path) = &self.save_calibration {
            anyhow::ensure!(
                learns,
                "--save-calibration saves what the calibrated locator learns from traffic: it needs --locator \
                 calibrated and --refit-every above 0"
            );
            // Refused now, not at the first fit, where its directory takes no new files.
            drop(super::output::Staged::new(path)?);
        }
        // A saved file that does not exist yet is the first start's: nothing learnt so far.
        let start = self.calibration.as_ref().or(self.save_calibration.as_ref().filter(|p| p.exists()));
        let (locator, partial) = match (self.locator, start) {
            (LocatorChoice::Paper, _) => (Locator::Paper, Vec::new()),
            (LocatorChoice::Robust, _) | (LocatorChoice::Calibrated, None) => (Locator::Robust, Vec::new()),
            (LocatorChoice::Calibrated, Some(path)) => {
                let calibrations = crate::calibration_file::read(path)?;
                let partial = calibrations.without_queries(k);
                anyhow::ensure!(
                    k > 1 || partial.is_empty(),
                    "calibration {} is not for this service: it has K = {:?}, and with K = 1 it forms no partial groups",
                    path.display(),
                    calibrations.queries()
                );
                let until = if learns { " until learnt from traffic" } else { "" };
                let configured = match calibrations.with_queries(k) {
                    Some(configured) => Locator::Calibrated(configured),
                    // Only calibrations smaller than K: those of its partial groups' codes
                    // (OnlineLocator::start refuses any that is not one of them).
                    None if calibrations.queries().iter().all(|&q| q < k) => {
                        eprintln!(
                            "approxifer: {} has no calibration for K = {k}, only for K' = {:?}: the full code is \
                             located robustly{until}",
                            path.display(),
                            calibrations.queries()
                        );
                        Locator::Robust
                    }
                    None => anyhow::bail!(
                        "calibration {} has none for K = {k} (it has K = {:?})",
                        path.display(),
                        calibrations.queries()
                    ),
                };
                if partial.is_empty() && k > 1 {
                    eprintln!(
                        "approxifer: {} calibrates the full code only: partial groups (K' < {k}) are located \
                         robustly{until} (`approxifer calibrate --partial` calibrates them too)",
                        path.display()
                    );
                }
                (configured, partial)
            }
        };
        let learning = learns.then(|| Learning {
            refit_every: self.refit_every,
            save: self.save_calibration.clone(),
            ..Learning::default()
        });
        Ok((locator, partial, learning))
    }
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Where to listen (v2 REST).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where to listen for v2 gRPC as well (inference.GRPCInferenceService).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// What clients call the model [default: the hosted model's name]
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    /// The model local workers load.
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    remote: RemoteArgs,
    /// With remote workers: one query's shape, e.g. 1,28,28 [default: 1,28,28, the zoo's]
    #[arg(long, value_name = "DIMS", value_delimiter = ',')]
    input_shape: Option<Vec<usize>>,
    /// With remote workers: values per prediction [default: 10, the zoo's]
    #[arg(long, value_name = "C")]
    output_len: Option<usize>,
    #[arg(long, value_enum, default_value_t = SchemeKind::Approxifer)]
    scheme: SchemeKind,
    /// Queries per coded group; the baselines use K workers (replication copies x K).
    #[arg(long = "k", default_value_t = 4)]
    k: usize,
    /// Once a coded batch can be decoded (N - S answers), wait up to this fraction of the
    /// recent batches' median completion time for its other answers: decoded from every
    /// answer, a group is a better approximation; a straggler's batch pays the wait (0:
    /// decode at the N - S-th answer).
    #[arg(long, value_name = "FRACTION", default_value_t = crate::serve::DEFAULT_DECODE_GRACE)]
    decode_grace: f64,
    /// Workers a coded group can do without: N = K + S (2K + 2A + S - 1 with --byzantine).
    #[arg(long, value_name = "S", default_value_t = 1)]
    stragglers: usize,
    /// Workers whose answers a coded group may find wrong and remove before decoding.
    #[arg(long, value_name = "A", default_value_t = 0)]
    byzantine: usize,
    /// Mix T random masks into every coded group, so that any T colluding workers see the
    /// queries under noise (N grows by T; empirical privacy, see the README).
    #[arg(long, value_name = "T", default_value_t = 0)]
    privacy: usize,
    /// With --privacy: the masks' standard deviation, in the units of the model's input.
    #[arg(long, value_name = "SIGMA", default_value_t = DEFAULT_MASK_SIGMA)]
    mask_sigma: f64,
    /// With --privacy: where the mask nodes sit among the data nodes.
    #[arg(long, value_name = "PLACEMENT", default_value_t = MaskPlacement::Tail)]
    mask_placement: MaskPlacement,
    #[command(flatten)]
    locating: LocatorArgs,
    /// How a worker lies when the --faults plan makes it Byzantine: gaussian-SIGMA,
    /// sign-flip, random, constant, targeted, colluding, rotate or swap-top.
    #[arg(long, default_value = "sign-flip")]
    attack: Attack,
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// With --scheme parm: the parity model for the hosted model at --k (what `approxifer
    /// train-parity` writes) [default: the shipped one for the embedded model]
    #[arg(long, value_name = "FILE")]
    parity: Option<PathBuf>,
    /// Hedged requests send a backup after this long; ApproxIFER re-sends a group's
    /// unanswered coded queries to workers that have answered after at least this long (later
    /// when recent batches took longer: twice their median); once a worker has been on one
    /// request for 3/4 of that delay, its coded queries of the next batches also go to other
    /// workers. Neither with --privacy: a worker would see two coded queries of a group.
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    hedge_after_ms: f64,
    /// A query not answered this long after dispatch gets a deadline error.
    #[arg(long, value_name = "MS", default_value_t = 2000.0)]
    deadline_ms: f64,
    /// Queries accepted and not yet answered, beyond which requests are refused (503).
    #[arg(long, default_value_t = 4096)]
    capacity: usize,
    /// The most queries in one request.
    #[arg(long, value_name = "QUERIES", default_value_t = 256)]
    max_request: usize,
    #[command(flatten)]
    workers: WorkerArgs,
    /// Where the coordinator decodes its batches (workers encode on their own devices).
    #[arg(long, value_enum, default_value_t = CodecArg::Cpu)]
    codec: CodecArg,
    /// Inject faults from this plan (TOML, or JSON if named *.json), for demonstrations.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub(super) fn run_cmd(args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.k >= 1 && args.copies >= 1 && args.capacity >= 1,
        "--k, --copies and --capacity must be at least 1"
    );
    anyhow::ensure!(
        (1..=args.capacity).contains(&args.max_request),
        "--max-request must be between 1 and --capacity ({})",
        args.capacity
    );
    anyhow::ensure!(
        args.parity.is_none() || args.scheme == SchemeKind::Parm,
        "--parity is ParM's parity model: it goes with --scheme parm"
    );
    anyhow::ensure!(
        args.scheme != SchemeKind::Parm || (args.stragglers == 1 && args.byzantine == 0),
        "ParM rebuilds one missing answer per group and finds no liars: --stragglers 1, --byzantine 0"
    );
    // ParM's parity model: named, or shipped for the embedded model at this K.
    if args.scheme == SchemeKind::Parm && args.parity.is_none() {
        anyhow::ensure!(
            args.model.architecture.is_none(),
            "--scheme parm with --model needs --parity FILE (approxifer train-parity trains one)"
        );
        let shipped = crate::embedded::parity_ks(crate::embedded::ARCHITECTURE, crate::embedded::DATASET);
        anyhow::ensure!(
            shipped.contains(&args.k),
            "no parity model shipped for K = {} (shipped: {shipped:?}); --parity FILE names one",
            args.k
        );
    }
    let max_queue_delay = args.workers.check(5.0)?;
    let faults = args.faults.as_deref().map(FaultPlan::from_file).transpose()?.map(|plan| (plan, args.seed));
    let deadline = ms(args.deadline_ms, "--deadline-ms")?;
    let hedge_after = ms(args.hedge_after_ms, "--hedge-after-ms")?;
    let model_name = args.model_name.clone().unwrap_or_else(|| args.model.default_name());
    let remote = args.remote.endpoints(&model_name)?;
    let shape = match &args.input_shape {
        Some(shape) => shape.clone(),
        None => args.model.query_shape().to_vec(),
    };
    let output_len = args.output_len.unwrap_or(crate::models::CLASSES);
    anyhow::ensure!(
        !shape.is_empty() && shape.iter().all(|&d| d > 0) && output_len > 0,
        "--input-shape and --output-len must be positive"
    );
    let (locator, partial_calibrations, learning) = args.locating.build(args.k)?;
    let settings = SchemeConfig {
        k: args.k,
        stragglers: args.stragglers,
        byzantine: args.byzantine,
        locator,
        partial_calibrations,
        learning,
        privacy: Privacy { colluders: args.privacy, placement: args.mask_placement, sigma: args.mask_sigma },
        copies: args.copies,
        hedge_after,
        coded_hedge_after: Some(hedge_after),
        input_len: shape.iter().product(),
        output_len,
        max_batch: args.workers.max_batch,
        max_queue_delay,
        coded_queue_delay: None,
        decode_grace: args.decode_grace,
        deadline,
        capacity: args.capacity,
        faults,
        codec: args.codec.build(&args.workers.adapter.clone().unwrap_or_else(AdapterChoice::from_env))?,
        trace_slower_than: None,
    };
    let pool = args.scheme.workers(&settings);
    let name = args.scheme.name();

    let (workers, _loads): (Vec<Arc<dyn Worker>>, _) = if remote.is_empty() {
        anyhow::ensure!(
            args.input_shape.is_none() && args.output_len.is_none(),
            "--input-shape and --output-len describe remote workers' model; local workers know theirs"
        );
        // Every setting is checked before the model loads: placement first.
        let (devices, notices) = args.workers.devices()?;
        let placement = Placement::new(pool, devices.len(), args.workers.workers_per_device)?;
        notices.iter().for_each(|line| eprintln!("{line}"));
        // One copy of the model, moved to each worker's device by its replica.
        let model = args.model.load(&devices[0])?;
        let shape = args.model.query_shape();
        let parity = match (args.scheme, &args.parity) {
            (SchemeKind::Parm, Some(path)) => Some(crate::models::load(args.model.architecture(), path, &devices[0])?),
            (SchemeKind::Parm, None) => {
                let (architecture, dataset) = (crate::embedded::ARCHITECTURE, crate::embedded::DATASET);
                let parity = crate::embedded::parity(architecture, dataset, args.k, &devices[0]).transpose()?;
                Some(parity.ok_or_else(|| anyhow::anyhow!("no parity model shipped for K = {}", args.k))?)
            }
            _ => None,
        };
        // ParM's workers answer logits, which its subtraction decodes; its last runs the parity.
        let replica = |w: usize, device: &Device| match &parity {
            Some(parity) if w == args.k => crate::serve::replica::classifier_logits(parity, device, shape),
            Some(_) => crate::serve::replica::classifier_logits(&model, device, shape),
            None => crate::serve::replica::classifier(&model, device, shape),
        };
        let tamper = |w: usize| args.attack.tamper(args.seed.wrapping_add(w as u64));
        let workers = local_workers(&devices, &placement, args.capacity, replica, tamper)
            .into_iter()
            .map(|(worker, _)| worker as Arc<dyn Worker>)
            .collect();
        // Devices the fault plan loads stay busy while the server runs.
        let loads = settings.faults.as_ref().map(|(plan, _)| background_loads(&devices, &placement, plan));
        (workers, loads)
    } else {
        anyhow::ensure!(
            args.scheme != SchemeKind::Parm,
            "--scheme parm needs workers that answer logits: local workers only (remote servers answer probabilities)"
        );
        anyhow::ensure!(
            args.model.architecture.is_none(),
            "--model and --weights name what local workers load; remote workers serve their own model"
        );
        anyhow::ensure!(
            remote.len() == pool,
            "the {name} scheme with these settings takes {pool} workers; {} remote workers were given",
            remote.len()
        );
        let workers = remote
            .into_iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let config = RemoteConfig {
                    endpoint,
                    input_shape: shape.clone(),
                    output_len,
                    timeout: deadline,
                    concurrency: args.remote.worker_concurrency,
                    capacity: args.capacity,
                };
                Arc::new(RemoteWorker::connect(i, config)) as Arc<dyn Worker>
            })
            .collect();
        (workers, None)
    };
    let scheme = args.scheme.start(&settings, workers)?;
    let locations = scheme.worker_locations();
    let config = HttpConfig {
        scheme: name.into(),
        model: ModelSpec::new(model_name, shape, output_len),
        max_batch: args.max_request,
        max_body_bytes: body_limit(args.max_request, settings.input_len),
        drain: deadline + std::time::Duration::from_secs(1),
    };
    let stats =
        host((args.listen, args.grpc_listen), scheme, config, &format!("the {name} scheme over {pool} workers"))?;
    eprintln!(
        "approxifer: stopped; {} queries answered, {} errors, {} cancelled (their clients went away), {} groups \
         decoded, {} failed, {} liars removed",
        stats.answered, stats.errors, stats.cancelled, stats.decoded_groups, stats.failed_groups, stats.located_workers
    );
    for (w, (worker, location)) in stats.workers.iter().zip(&locations).enumerate() {
        // Busy time per answer: the worker's mean service time, where a straggler shows.
        let mean_ms = worker.busy_ns as f64 * 1e-6 / worker.answers.max(1) as f64;
        eprintln!(
            "approxifer: worker {w} ({location}): {} requests, {} answers ({} late), {mean_ms:.2} ms busy per \
             answer, {} non-finite rows, located in {} groups",
            worker.requests, worker.answers, worker.late_answers, worker.non_finite_rows, worker.located
        );
    }
    Ok(())
}

/// The largest request body for `queries` queries of `input_len` values: JSON numbers take
/// up to about 24 bytes each.
pub(super) fn body_limit(queries: usize, input_len: usize) -> usize {
    queries.saturating_mul(input_len).saturating_mul(24).max(64 * 1024)
}

/// Serves `scheme` over v2 REST on `listen.0` (and gRPC on `listen.1`) until Ctrl-C or
/// SIGTERM; its books once stopped.
pub(super) fn host(
    (rest, grpc): (SocketAddr, Option<SocketAddr>),
    scheme: Box<dyn crate::serve::Scheme>,
    config: HttpConfig,
    what: &str,
) -> anyhow::Result<crate::serve::Stats> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let rest = tokio::net::TcpListener::bind(rest).await?;
        let grpc = match grpc {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
            None => None,
        };
        let model = &config.model.name;
        let grpc_line = match &grpc {
            Some(listener) => format!(", gRPC on {}", listener.local_addr()?),
            None => String::new(),
        };
        eprintln!(
            "approxifer: serving model '{model}' ({what}) on http://{}{grpc_line}: POST /v2/models/{model}/infer \
             (KServe v2), /v1/predict; GET /v2/health/ready, /metrics; Ctrl-C stops after answering what was \
             accepted",
            rest.local_addr()?
        );
        anyhow::Ok(serve_v2(rest, grpc, scheme, config, shutdown_signal()).await?)
    })
}

/// Ctrl-C, or SIGTERM where there is one (what service managers send).
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
