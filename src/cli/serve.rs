//! `approxifer serve`: the embedded model behind an HTTP endpoint, through the coded runtime
//! (or a baseline, to compare), with local workers holding one model replica each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Device;
use clap::{Args, ValueEnum};

use super::{CodecArg, ms};
use crate::attack::Attack;
use crate::backend::BurnDevice;
use crate::kernels::Locator;
use crate::kernels::gpu::AdapterChoice;
use crate::serve::http::{HttpConfig, serve};
use crate::serve::{FaultPlan, LocalWorker, SchemeConfig, SchemeKind, Worker};

/// Where the workers' model replicas run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkerDevice {
    /// Every GPU of the best kind present, workers spread over them; the CPU when there is
    /// none (a CPU Vulkan driver runs one-query inference slower than Burn's CPU backend).
    Auto,
    /// Burn's CPU backend.
    Cpu,
    /// Every adapter of the best kind `--adapter` accepts, workers spread over them; an error
    /// when there is none.
    Gpu,
}

#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[arg(long, value_enum, default_value_t = SchemeKind::Approxifer)]
    scheme: SchemeKind,
    /// Queries per coded group; the baselines use K workers (replication copies x K).
    #[arg(long = "k", default_value_t = 4)]
    k: usize,
    /// Workers a coded group can do without: N = K + S (2K + 2A + S - 1 with --byzantine).
    #[arg(long, value_name = "S", default_value_t = 1)]
    stragglers: usize,
    /// Workers whose answers a coded group may find wrong and remove before decoding.
    #[arg(long, value_name = "A", default_value_t = 0)]
    byzantine: usize,
    /// How wrong answers are found with --byzantine: robust (ours) or paper.
    #[arg(long, default_value_t = Locator::Robust)]
    locator: Locator,
    /// How a worker lies when the --faults plan makes it Byzantine: gaussian-SIGMA,
    /// sign-flip, random, constant, targeted or colluding.
    #[arg(long, default_value = "sign-flip")]
    attack: Attack,
    #[arg(long, default_value_t = 2)]
    copies: usize,
    /// Hedged requests send a backup after this long; ApproxIFER re-sends a group's
    /// unanswered coded queries to workers that have answered.
    #[arg(long, value_name = "MS", default_value_t = 20.0)]
    hedge_after_ms: f64,
    /// A coded group waits at most this long for its K queries.
    #[arg(long, value_name = "MS", default_value_t = 5.0)]
    max_wait_ms: f64,
    /// A query not answered this long after dispatch gets a deadline error.
    #[arg(long, value_name = "MS", default_value_t = 2000.0)]
    deadline_ms: f64,
    /// Queries accepted and not yet answered, beyond which requests are refused (503).
    #[arg(long, default_value_t = 4096)]
    capacity: usize,
    /// The most queries in one request.
    #[arg(long, default_value_t = 256)]
    max_batch: usize,
    /// Where the workers' model replicas run.
    #[arg(long, value_enum, default_value_t = WorkerDevice::Auto)]
    device: WorkerDevice,
    /// Adapter for `--device gpu|auto`: auto, discrete, integrated, cpu, or part of a name
    /// [env: APPROXIFER_ADAPTER]
    #[arg(long)]
    adapter: Option<AdapterChoice>,
    /// Where the coordinator encodes and decodes groups.
    #[arg(long, value_enum, default_value_t = CodecArg::Cpu)]
    codec: CodecArg,
    /// Inject faults from this plan (TOML, or JSON if named *.json), for demonstrations.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// The devices the replicas go on, with a notice saying which.
fn devices(args: &ServeArgs) -> anyhow::Result<Vec<Device>> {
    let choice = args.adapter.clone().unwrap_or_else(AdapterChoice::from_env);
    let gpus = match args.device {
        WorkerDevice::Cpu => Vec::new(),
        WorkerDevice::Gpu => BurnDevice::select_all(&choice)?,
        WorkerDevice::Auto => {
            BurnDevice::select_all(&choice).unwrap_or_default().into_iter().filter(|d| !d.is_cpu).collect()
        }
    };
    if gpus.is_empty() {
        eprintln!("approxifer: no GPU for the workers; their replicas run on the CPU (Burn's flex backend)");
        return Ok(vec![Device::flex()]);
    }
    for gpu in &gpus {
        eprintln!("{}", gpu.notice());
    }
    Ok(gpus.into_iter().map(|g| g.device).collect())
}

pub(super) fn run_cmd(args: &ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.k >= 1 && args.copies >= 1 && args.capacity >= 1,
        "--k, --copies and --capacity must be at least 1"
    );
    anyhow::ensure!(
        (1..=args.capacity).contains(&args.max_batch),
        "--max-batch must be between 1 and --capacity ({})",
        args.capacity
    );
    let faults = args.faults.as_deref().map(FaultPlan::from_file).transpose()?.map(|plan| (plan, args.seed));
    let (deadline, max_wait) = (ms(args.deadline_ms, "--deadline-ms")?, ms(args.max_wait_ms, "--max-wait-ms")?);
    let hedge_after = ms(args.hedge_after_ms, "--hedge-after-ms")?;
    let sample = crate::embedded::sample();
    let shape = [1, sample.rows, sample.cols];
    let settings = SchemeConfig {
        k: args.k,
        stragglers: args.stragglers,
        byzantine: args.byzantine,
        locator: args.locator,
        copies: args.copies,
        hedge_after,
        coded_hedge_after: Some(hedge_after),
        input_len: shape.iter().product(),
        output_len: crate::models::CLASSES,
        max_wait,
        deadline,
        capacity: args.capacity,
        faults,
        codec: args.codec.build(&args.adapter.clone().unwrap_or_else(AdapterChoice::from_env))?,
    };
    let (input_len, pool) = (settings.input_len, args.scheme.workers(&settings));

    // One copy of the model, moved to each worker's device by its replica.
    let devices = devices(args)?;
    let model = crate::embedded::model(&devices[0])?;
    let workers: Vec<Arc<dyn Worker>> = (0..pool)
        .map(|w| {
            let replica = crate::serve::replica::classifier(&model, &devices[w % devices.len()], shape);
            let tamper = args.attack.tamper(args.seed.wrapping_add(w as u64));
            Arc::new(LocalWorker::with_tamper(w, replica, args.capacity, tamper)) as Arc<dyn Worker>
        })
        .collect();
    let scheme = args.scheme.start(&settings, workers)?;
    let name = args.scheme.name();
    let config = HttpConfig {
        scheme: name.into(),
        input_len,
        output_len: settings.output_len,
        max_batch: args.max_batch,
        max_body_bytes: (args.max_batch * input_len * 24).max(64 * 1024),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stats = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        eprintln!(
            "approxifer: serving the embedded {} ({} scheme, {pool} workers) on http://{}: POST /v1/predict, \
             GET /health, GET /metrics; Ctrl-C stops after answering what was accepted",
            crate::embedded::ARCHITECTURE.name(),
            name,
            listener.local_addr()?
        );
        anyhow::Ok(serve(listener, scheme, config, shutdown_signal()).await?)
    })?;
    eprintln!(
        "approxifer: stopped; {} queries answered, {} errors, {} groups decoded, {} failed, {} liars removed",
        stats.answered, stats.errors, stats.decoded_groups, stats.failed_groups, stats.located_workers
    );
    Ok(())
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
