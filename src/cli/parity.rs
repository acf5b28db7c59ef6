//! `approxifer train-parity`: a ParM parity model for a hosted model (src/parm.rs).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::data::{self, Dataset, Split};
use crate::kernels::gpu::AdapterChoice;
use crate::models::{self, Architecture};
use crate::parm::{ParityConfig, train_parity};

#[derive(Debug, Args)]
pub(super) struct TrainParityArgs {
    /// The dataset (from scripts/fetch-data.sh).
    #[arg(long, value_enum, default_value_t = Dataset::FashionMnist)]
    dataset: Dataset,
    /// The hosted model's architecture, which the parity model shares [default: the
    /// dataset's: digit-cnn for MNIST, lenet5 for Fashion-MNIST]
    #[arg(long, value_enum)]
    model: Option<Architecture>,
    /// The hosted model's weights [default: the digit CNN from the data directory, or the
    /// embedded model]
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Queries per parity group.
    #[arg(long = "k", default_value_t = 4)]
    k: usize,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// K-tuples per step [default: 32, 64 at K = 2]
    #[arg(long, value_name = "TUPLES")]
    tuples_per_step: Option<usize>,
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Training images held out to choose the epoch kept.
    #[arg(long, default_value_t = 5000)]
    holdout: usize,
    /// Train on the first N training images only (all by default).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Where the parity model goes (Burn's burnpack format).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The data directory [default: $APPROXIFER_DATA, else ./data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Adapter: auto (a GPU, else Burn's CPU backend), discrete, integrated, cpu (a CPU Vulkan
    /// driver such as lavapipe), or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER", conflicts_with = "flex")]
    adapter: Option<AdapterChoice>,
    /// Train with Burn's pure-Rust CPU backend (flex) instead of a wgpu adapter.
    #[arg(long)]
    flex: bool,
    /// Print one JSON object per epoch instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &TrainParityArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let mut config = ParityConfig::new(args.k, args.epochs);
    config.tuples_per_step = args.tuples_per_step;
    config.learning_rate = args.learning_rate;
    config.holdout = args.holdout;
    config.seed = args.seed;
    let dir = args.data.clone().unwrap_or_else(data::default_dir);
    let mut train_set = data::load(&dir, args.dataset, Split::Train)?;
    if let Some(limit) = args.limit {
        train_set = train_set.take(limit);
    }
    let device = super::train::training_device(args.adapter.as_ref(), args.flex)?;
    let (architecture, hosted) =
        super::model::hosted_for(args.dataset, args.model, args.weights.as_deref(), &dir, &device)?;
    let staged = super::output::Staged::new(&args.output)?;
    let bar = super::progress_bar(0, "steps");
    if !args.json {
        writeln!(out, "{:>6} {:>10} {:>10} {:>10}", "epoch", "loss", "agreement", "accuracy")?;
    }
    let mut written = Ok(());
    let (model, kept, _) = train_parity(
        &config,
        architecture,
        args.dataset,
        &hosted,
        &train_set,
        &device,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        |report| {
            let line = if args.json {
                serde_json::to_string(report).map_err(anyhow::Error::from)
            } else {
                Ok(format!(
                    "{:>6} {:>10.4} {:>10.4} {:>10.4}",
                    report.epoch, report.mean_loss, report.validation_agreement, report.validation_accuracy
                ))
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
    eprintln!(
        "approxifer: saved the {} parity model for K = {} (epoch {kept}, best held-out agreement) to {}",
        architecture.name(),
        args.k,
        args.output.display()
    );
    Ok(())
}
