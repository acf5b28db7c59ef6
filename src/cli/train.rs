//! `approxifer train`: train a zoo model on MNIST or Fashion-MNIST and save its weights.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::data::{self, Dataset, Split};
use crate::kernels::gpu::AdapterChoice;
use crate::models::{self, Architecture};
use crate::train::{TrainConfig, train};

#[derive(Debug, Args)]
pub(super) struct TrainArgs {
    /// The architecture to train.
    #[arg(long, value_enum, default_value_t = Architecture::Lenet5)]
    model: Architecture,
    /// The dataset (from scripts/fetch-data.sh).
    #[arg(long, value_enum, default_value_t = Dataset::FashionMnist)]
    dataset: Dataset,
    /// Where the weights go (Burn's burnpack format).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Train on the first N training images only (all by default).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The data directory [default: $APPROXIFER_DATA, else ./data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Adapter: auto (a GPU, else Burn's CPU backend), discrete, integrated, cpu (a CPU Vulkan
    /// driver such as lavapipe), or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER", conflicts_with = "flex")]
    adapter: Option<AdapterChoice>,
    /// Train with Burn's pure-Rust CPU backend (flex) instead of a wgpu adapter (the default
    /// when the only adapter is a CPU Vulkan driver, which is far slower at this).
    #[arg(long)]
    flex: bool,
    /// Print one JSON object per epoch instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &TrainArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let config = TrainConfig {
        architecture: args.model,
        dataset: args.dataset,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        seed: args.seed,
    };
    config.check()?;
    let dir = args.data.clone().unwrap_or_else(data::default_dir);
    let mut train_set = data::load(&dir, args.dataset, Split::Train)?;
    if let Some(limit) = args.limit {
        train_set = train_set.take(limit);
    }
    let test_set = data::load(&dir, args.dataset, Split::Test)?;
    let device = training_device(args.adapter.as_ref(), args.flex)?;
    let staged = super::output::Staged::new(&args.output)?;
    let bar = super::progress_bar(0, "batches");
    if !args.json {
        writeln!(out, "{:>6} {:>10} {:>14}", "epoch", "loss", "test accuracy")?;
    }
    let mut written = Ok(());
    let (model, _) = train(
        &config,
        &train_set,
        &test_set,
        &device,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        |report| {
            let line = if args.json {
                serde_json::to_string(report).map_err(anyhow::Error::from)
            } else {
                Ok(format!("{:>6} {:>10.4} {:>14.4}", report.epoch, report.mean_loss, report.test_accuracy))
            };
            if written.is_ok() {
                written = line.and_then(|line| Ok(bar.suspend(|| writeln!(out, "{line}"))?));
            }
        },
    )?;
    bar.finish_and_clear();
    written?;
    models::save(&model, staged.path())?;
    staged.persist()?;
    eprintln!("approxifer: saved {} weights to {}", args.model.name(), args.output.display());
    Ok(())
}

/// Where to train: flex when asked, or where [`BurnDevice::select_or_flex`] puts a model (a
/// CPU Vulkan driver trains convolutions far slower than flex: LeNet-5 on 2000 images and a
/// 10000-image test, over 5 min against 2.4 s on two cores); else the adapter chosen.
///
/// [`BurnDevice::select_or_flex`]: crate::backend::BurnDevice::select_or_flex
pub(super) fn training_device(adapter: Option<&AdapterChoice>, flex: bool) -> anyhow::Result<burn::tensor::Device> {
    if flex {
        eprintln!("approxifer: training on the CPU with Burn's flex backend");
        return Ok(burn::tensor::Device::flex());
    }
    let burn = super::model_device(adapter)?;
    match &burn.fallback {
        Some(why) => eprintln!("approxifer: {why}; training on the CPU with Burn's flex backend"),
        None => eprintln!("{}", burn.notice()),
    }
    Ok(burn.device)
}
