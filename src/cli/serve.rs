//! `approxifer serve`: the embedded model behind an HTTP endpoint, through the batched coded
//! runtime (or a baseline, to compare), with local workers holding one model replica each on
//! the box's devices.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::Device;
use clap::Args;

use super::workers::WorkerArgs;
use super::{CodecArg, ms};
use crate::attack::Attack;
use crate::kernels::Locator;
use crate::kernels::gpu::AdapterChoice;
use crate::serve::http::{HttpConfig, serve};
use crate::serve::pool::{background_loads, local_workers};
use crate::serve::{FaultPlan, Placement, SchemeConfig, SchemeKind, Worker};

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
    let max_queue_delay = args.workers.check(5.0)?;
    let faults = args.faults.as_deref().map(FaultPlan::from_file).transpose()?.map(|plan| (plan, args.seed));
    let deadline = ms(args.deadline_ms, "--deadline-ms")?;
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
        max_batch: args.workers.max_batch,
        max_queue_delay,
        deadline,
        capacity: args.capacity,
        faults,
        codec: args.codec.build(&args.workers.adapter.clone().unwrap_or_else(AdapterChoice::from_env))?,
    };
    let (input_len, pool) = (settings.input_len, args.scheme.workers(&settings));

    // Every setting is checked before the model loads: placement first.
    let (devices, notices) = args.workers.devices()?;
    let placement = Placement::new(pool, devices.len(), args.workers.workers_per_device)?;
    notices.iter().for_each(|line| eprintln!("{line}"));
    // One copy of the model, moved to each worker's device by its replica.
    let model = crate::embedded::model(&devices[0])?;
    let replica = |device: &Device| crate::serve::replica::classifier(&model, device, shape);
    let tamper = |w: usize| args.attack.tamper(args.seed.wrapping_add(w as u64));
    let workers: Vec<Arc<dyn Worker>> = local_workers(&devices, &placement, args.capacity, replica, tamper)
        .into_iter()
        .map(|(worker, _)| worker as Arc<dyn Worker>)
        .collect();
    // Devices the fault plan loads stay busy while the server runs.
    let _loads = settings.faults.as_ref().map(|(plan, _)| background_loads(&devices, &placement, plan));
    let scheme = args.scheme.start(&settings, workers)?;
    let name = args.scheme.name();
    let config = HttpConfig {
        scheme: name.into(),
        input_len,
        output_len: settings.output_len,
        max_batch: args.max_request,
        max_body_bytes: (args.max_request * input_len * 24).max(64 * 1024),
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
