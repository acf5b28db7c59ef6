//! The options `serve` and `serve-bench` share for their workers: where the model replicas
//! run and how queries are batched for them.

use anyhow::Context;
use burn::tensor::Device;
use clap::{Args, ValueEnum};

use super::ms;
use crate::backend::BurnDevice;
use crate::kernels::gpu::AdapterChoice;

/// The largest `--max-batch`: a batch goes to a device in one buffer, and 4096 groups of 8
/// images of 28 x 28 already take 98 MiB, near the 128 MiB one storage binding may hold on
/// some drivers (lavapipe).
const MAX_BATCH: usize = 4096;

/// Where the workers' model replicas run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum WorkerDevice {
    /// Every GPU of the best kind present, workers spread over them; Burn's CPU backend when
    /// there is none (a CPU Vulkan driver such as lavapipe runs the model slower than it).
    Auto,
    /// Burn's CPU backend (flex): coded queries are then formed by the CPU kernels.
    Cpu,
    /// Every adapter of the best kind `--adapter` accepts (lavapipe counts), workers spread
    /// over them; an error when there is none.
    Gpu,
}

#[derive(Debug, Args)]
pub(super) struct WorkerArgs {
    /// Where the workers' model replicas run; on a GPU each worker forms its coded queries
    /// there with the WGSL encode.
    #[arg(long, value_enum, default_value_t = WorkerDevice::Auto)]
    pub device: WorkerDevice,
    /// Adapter for `--device gpu|auto`: auto, discrete, integrated, cpu, or part of a name
    /// [env: APPROXIFER_ADAPTER]
    #[arg(long)]
    pub adapter: Option<AdapterChoice>,
    /// Workers on each device, filling one device before the next [default: spread evenly]
    #[arg(long, value_name = "M")]
    pub workers_per_device: Option<usize>,
    /// The most groups of K queries in one batch (queries, for the uncoded baselines): each
    /// worker answers a batch with one forward pass of up to this many rows.
    #[arg(long, value_name = "B", default_value_t = 32)]
    pub max_batch: usize,
    /// A batch that is not full is sent this long after its oldest query arrived [default:
    /// serve 5; serve-bench twice the injected service time, at least 1]
    #[arg(long, value_name = "MS")]
    pub max_queue_delay_ms: Option<f64>,
}

impl WorkerArgs {
    /// Checks the batching options; the queue delay (`default_ms` when not given).
    pub fn check(&self, default_ms: f64) -> anyhow::Result<std::time::Duration> {
        anyhow::ensure!(
            (1..=MAX_BATCH).contains(&self.max_batch),
            "--max-batch must be between 1 and {MAX_BATCH} (a batch's rows go to the device in one buffer)"
        );
        anyhow::ensure!(self.workers_per_device != Some(0), "--workers-per-device must be at least 1");
        ms(self.max_queue_delay_ms.unwrap_or(default_ms), "--max-queue-delay-ms")
    }

    /// The devices the replicas go on, and the lines that tell the user which (printed once
    /// every setting has been checked, so that a refusal stays one line).
    pub fn devices(&self) -> anyhow::Result<(Vec<Device>, Vec<String>)> {
        let choice = self.adapter.clone().unwrap_or_else(AdapterChoice::from_env);
        let gpus = match self.device {
            WorkerDevice::Cpu => Vec::new(),
            WorkerDevice::Gpu => BurnDevice::select_all(&choice)
                .context("--device gpu (--device auto runs the workers on the CPU when there is none)")?,
            WorkerDevice::Auto => {
                BurnDevice::select_all(&choice).unwrap_or_default().into_iter().filter(|d| !d.is_cpu).collect()
            }
        };
        if gpus.is_empty() {
            let notice = "approxifer: no GPU for the workers; their replicas run on the CPU (Burn's flex backend), \
                          coded queries formed by the CPU kernels";
            return Ok((vec![Device::flex()], vec![notice.into()]));
        }
        let notices = gpus.iter().map(BurnDevice::notice).collect();
        Ok((gpus.into_iter().map(|g| g.device).collect(), notices))
    }
}

/// Remote workers instead of local ones: `serve` and `serve-bench` share these options.
#[derive(Debug, Args)]
pub(super) struct RemoteArgs {
    /// A remote worker: a v2 server at grpc://HOST:PORT (gRPC) or http://HOST:PORT (REST),
    /// optionally followed by /v2/models/MODEL[/versions/V] (the model is the served model's
    /// name when the URL names none). Repeat once per worker; no local workers are started
    /// then.
    #[arg(long = "worker", value_name = "URL")]
    pub urls: Vec<String>,
    /// Remote workers listed in a TOML file: [[worker]] entries of url, model, version,
    /// protocol ("grpc" or "rest"; default grpc), binary (REST: true or false; left out: binary
    /// tensors until the server refuses them and takes JSON).
    #[arg(long = "workers", value_name = "FILE", conflicts_with = "urls")]
    pub file: Option<std::path::PathBuf>,
    /// With remote workers: batches in flight to each at once.
    #[arg(long, value_name = "R", default_value_t = 2)]
    pub worker_concurrency: usize,
}

impl RemoteArgs {
    /// The remote workers named (none: local workers), a model named `default_model` where
    /// their URLs name none.
    pub fn endpoints(&self, default_model: &str) -> anyhow::Result<Vec<crate::serve::Endpoint>> {
        use crate::serve::Endpoint;
        let endpoints = match &self.file {
            Some(path) => Endpoint::from_file(path)?,
            None => self.urls.iter().map(|url| Endpoint::parse(url, default_model)).collect::<Result<_, _>>()?,
        };
        anyhow::ensure!(
            endpoints.is_empty() || self.worker_concurrency >= 1,
            "--worker-concurrency must be at least 1"
        );
        Ok(endpoints)
    }
}
