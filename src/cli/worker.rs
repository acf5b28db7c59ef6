//! `approxifer worker`: one model replica on one device behind the Open Inference Protocol,
//! with dynamic batching, for a coordinator (`serve --worker URL`) on this or another machine.
//! A box with G GPUs runs G of them (`--adapter` picks each one's); a cluster runs them on many
//! machines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::model::ModelArgs;
use super::serve::{body_limit, host};
use super::workers::WorkerArgs;
use super::{CodecArg, ms};
use crate::serve::http::{HttpConfig, ModelSpec};
use crate::serve::pool::{background_loads, local_workers};
use crate::serve::{FaultPlan, Placement, SchemeConfig, SchemeKind, Worker, sign_flip};

#[derive(Debug, Args)]
pub(super) struct WorkerCmd {
    /// Where to listen (v2 REST).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Where to listen for v2 gRPC as well (what `serve --worker grpc://...` calls).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// What clients call the model [default: the hosted model's name]
    #[arg(long, value_name = "NAME")]
    model_name: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Replicas, workers, batching: the device is the first --device/--adapter selects;
    /// --workers-per-device gives the model instances on it (default 1).
    #[command(flatten)]
    workers: WorkerArgs,
    /// The most queries in one request (a coordinator's batch, every part of it).
    #[arg(long, value_name = "QUERIES", default_value_t = 8192)]
    max_request: usize,
    /// Queries accepted and not yet answered, beyond which requests are refused (503).
    #[arg(long, default_value_t = 16384)]
    capacity: usize,
    /// A request not answered this long after it was batched gets a deadline error.
    #[arg(long, value_name = "MS", default_value_t = 60000.0)]
    deadline_ms: f64,
    /// Inject faults from this plan (its worker 0 is this worker's first instance), to test
    /// a coordinator against a slow or failing server.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

pub(super) fn run_cmd(args: &WorkerCmd) -> anyhow::Result<()> {
    anyhow::ensure!(args.capacity >= 1, "--capacity must be at least 1");
    anyhow::ensure!(
        (1..=args.capacity).contains(&args.max_request),
        "--max-request must be between 1 and --capacity ({})",
        args.capacity
    );
    // A worker's batcher dispatches what has arrived at once unless told to wait.
    let max_queue_delay = args.workers.check(0.0)?;
    let deadline = ms(args.deadline_ms, "--deadline-ms")?;
    let faults = args.faults.as_deref().map(FaultPlan::from_file).transpose()?.map(|plan| (plan, args.seed));
    let instances = args.workers.workers_per_device.unwrap_or(1);
    let shape = args.model.query_shape();
    let settings = SchemeConfig {
        k: instances,
        stragglers: 0,
        byzantine: 0,
        locator: Default::default(),
        partial_calibrations: Vec::new(),
        learning: None,
        privacy: Default::default(),
        copies: 1,
        hedge_after: deadline,
        coded_hedge_after: None,
        input_len: shape.iter().product(),
        output_len: crate::models::CLASSES,
        max_batch: args.workers.max_batch,
        max_queue_delay,
        coded_queue_delay: None,
        decode_grace: crate::serve::DEFAULT_DECODE_GRACE,
        deadline,
        capacity: args.capacity,
        faults,
        codec: CodecArg::Cpu.build(&Default::default())?,
        trace_slower_than: None,
    };
    let (mut devices, notices) = args.workers.devices()?;
    devices.truncate(1);
    let placement = Placement::new(instances, 1, None)?;
    notices.iter().take(1).for_each(|line| eprintln!("{line}"));
    let model = args.model.load(&devices[0])?;
    let replica = |_, device: &burn::tensor::Device| crate::serve::replica::classifier(&model, device, shape);
    let workers: Vec<Arc<dyn Worker>> = local_workers(&devices, &placement, args.capacity, replica, |_| sign_flip())
        .into_iter()
        .map(|(worker, _)| worker as Arc<dyn Worker>)
        .collect();
    let _loads = settings.faults.as_ref().map(|(plan, _)| background_loads(&devices, &placement, plan));
    let scheme = SchemeKind::Uncoded.start(&settings, workers)?;
    let name = args.model_name.clone().unwrap_or_else(|| args.model.default_name());
    let config = HttpConfig {
        scheme: "worker".into(),
        model: ModelSpec::new(name, shape.to_vec(), settings.output_len),
        max_batch: args.max_request,
        max_body_bytes: body_limit(args.max_request, settings.input_len),
        drain: deadline + std::time::Duration::from_secs(1),
    };
    let stats = host(
        (args.listen, args.grpc_listen),
        scheme,
        config,
        &format!("a worker, {instances} instance(s) on one device"),
    )?;
    eprintln!(
        "approxifer: worker stopped; {} queries answered, {} errors, {} cancelled (their callers went away)",
        stats.answered, stats.errors, stats.cancelled
    );
    Ok(())
}
