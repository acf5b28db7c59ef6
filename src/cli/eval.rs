//! `approxifer eval`: accuracy of coded inference over a grid of K, S and layouts.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::attack::Attack;
use crate::data::{self, Dataset, Split};
use crate::eval::{ByzantineConfig, ByzantineRow, EvalConfig, EvalRow, Outputs, Setting, evaluate, evaluate_byzantine};
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::{Layout, NodeFamily};
use crate::models::{self, Architecture};

/// Which layouts to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum LayoutChoice {
    NonSystematic,
    Systematic,
    Both,
}

#[derive(Debug, Args)]
pub(super) struct EvalArgs {
    /// The dataset (from scripts/fetch-data.sh).
    #[arg(long, value_enum, default_value_t = Dataset::Mnist)]
    dataset: Dataset,
    /// The architecture of the hosted model.
    #[arg(long, value_enum, default_value_t = Architecture::DigitCnn)]
    model: Architecture,
    /// Its weights [default: the digit CNN from the data directory, or the embedded model
    /// when it matches --model and --dataset]
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Queries per group, one or more.
    #[arg(long = "k", value_delimiter = ',', default_values_t = [8, 10, 12])]
    k: Vec<usize>,
    /// Stragglers per group, one or more (N = K + S) [default: 1,2,3; 0 with --byzantine]
    #[arg(long, value_delimiter = ',')]
    stragglers: Option<Vec<usize>>,
    /// Byzantine workers per group, one or more: measure the locators instead (N = 2K + 2A +
    /// S - 1; A random liars per group among the responders, for each --attack).
    #[arg(long, value_name = "A", value_delimiter = ',')]
    byzantine: Option<Vec<usize>>,
    /// With --byzantine, the attacks, comma-separated: none, gaussian-SIGMA, sign-flip,
    /// random, constant, targeted, colluding [default: none and all of the others, with
    /// gaussian-1, gaussian-10 and gaussian-100]
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "byzantine")]
    attack: Option<Vec<Attack>>,
    /// Layouts [default: both; non-systematic with --byzantine, the only one it runs]
    #[arg(long, value_enum)]
    layout: Option<LayoutChoice>,
    /// Test queries per setting (at most the test set's 10000).
    #[arg(long, default_value_t = 10_000)]
    queries: usize,
    /// What the workers return and the decoder interpolates [default: softmax; logits with
    /// --byzantine]
    #[arg(long, value_enum)]
    outputs: Option<Outputs>,
    /// Worker nodes: chebyshev2, chebyshev1 or authors [default: authors, which measured best
    /// with N = K + S; chebyshev1 for the systematic layout]
    #[arg(long, value_name = "FAMILY")]
    nodes: Option<NodeFamily>,
    /// Groups per device batch.
    #[arg(long, default_value_t = 64)]
    batch_groups: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Also draw accuracy against K and against S into this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// The data directory [default: $APPROXIFER_DATA, else ./data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Adapter: auto, discrete, integrated, cpu, or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<AdapterChoice>,
    /// Print one JSON object per setting instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &EvalArgs, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.byzantine.is_none() || args.plot.is_none(),
        "--plot draws accuracy against K and S; it does not apply to --byzantine"
    );
    anyhow::ensure!(
        args.byzantine.is_none() || matches!(args.layout, None | Some(LayoutChoice::NonSystematic)),
        "--byzantine evaluates the non-systematic layout only"
    );
    anyhow::ensure!(args.k.iter().all(|&k| k >= 1), "--k values must be at least 1");
    anyhow::ensure!(args.queries >= 1, "--queries must be at least 1");
    let dir = args.data.clone().unwrap_or_else(data::default_dir);
    let burn = crate::backend::BurnDevice::select(&args.adapter.clone().unwrap_or_else(AdapterChoice::from_env))?;
    let device = burn.device.clone();
    let model = match &args.weights {
        Some(path) => models::load(args.model, path, &device)?,
        None if args.model == Architecture::DigitCnn => {
            anyhow::ensure!(args.dataset == Dataset::Mnist, "the digit CNN is an MNIST model; pass --dataset mnist");
            models::load(args.model, &dir.join("models/digit_recognizer.pth"), &device)?
        }
        None => crate::embedded::model_for(args.model, args.dataset, &device)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no weights for {} on {}: pass --weights FILE (approxifer train writes one)",
                args.model.name(),
                args.dataset.name()
            )
        })?,
    };
    let test = data::load(&dir, args.dataset, Split::Test)?;
    if let Some(plot) = &args.plot {
        std::fs::File::create(plot)?; // fail before the work, not after
    }
    eprintln!("{}", burn.notice());
    let byzantine = args.byzantine.is_some();
    // The Byzantine evaluation runs the non-systematic layout, without stragglers, on logits
    // unless told otherwise.
    let layouts: &[Layout] =
        match args.layout.unwrap_or(if byzantine { LayoutChoice::NonSystematic } else { LayoutChoice::Both }) {
            LayoutChoice::NonSystematic => &[Layout::NonSystematic],
            LayoutChoice::Systematic => &[Layout::Systematic],
            LayoutChoice::Both => &[Layout::NonSystematic, Layout::Systematic],
        };
    let default_stragglers: &[usize] = if byzantine { &[0] } else { &[1, 2, 3] };
    let mut settings = Vec::new();
    for &layout in layouts {
        for &k in &args.k {
            for &stragglers in args.stragglers.as_deref().unwrap_or(default_stragglers) {
                settings.push(Setting { k, stragglers, layout });
            }
        }
    }
    let config = EvalConfig {
        dataset: args.dataset,
        model: args.model.name().into(),
        settings,
        queries: args.queries,
        batch_groups: args.batch_groups,
        outputs: args.outputs.unwrap_or(if byzantine { Outputs::Logits } else { Outputs::Softmax }),
        nodes: args.nodes,
        seed: args.seed,
    };
    if let Some(byzantine) = &args.byzantine {
        let attacks = args.attack.clone().unwrap_or_else(|| std::iter::once(Attack::None).chain(Attack::ALL).collect());
        let config = ByzantineConfig { eval: config, byzantine: byzantine.clone(), attacks };
        let rows = with_progress(|progress| evaluate_byzantine(&model, &test, &config, &device, progress))?;
        if args.json {
            super::write_json_lines(&rows, out)?;
        } else {
            write_byzantine_table(&rows, out)?;
        }
        return Ok(());
    }
    let rows = evaluate_with_progress(&model, &test, &config, &device)?;
    if args.json {
        super::write_json_lines(&rows, out)?;
    } else {
        write_table(&rows, out)?;
    }
    if let Some(path) = &args.plot {
        crate::plot::accuracy_svg(&rows, path)?;
        eprintln!("approxifer: plot written to {}", path.display());
    }
    Ok(())
}

/// [`evaluate`] under a progress bar counting groups.
pub(super) fn evaluate_with_progress(
    model: &crate::models::Classifier,
    images: &crate::data::Images,
    config: &EvalConfig,
    device: &burn::tensor::Device,
) -> anyhow::Result<Vec<EvalRow>> {
    with_progress(|progress| evaluate(model, images, config, device, progress))
}

/// Runs an evaluation under a progress bar fed its `(done, total)` group counts.
fn with_progress<T>(
    evaluation: impl FnOnce(&mut dyn FnMut(usize, usize)) -> Result<T, crate::eval::EvalError>,
) -> anyhow::Result<T> {
    let bar = super::progress_bar(0, "groups");
    let result = evaluation(&mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    Ok(result)
}

pub(super) fn write_table(rows: &[EvalRow], out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<14} {:<10} {:>3} {:>3} {:>3} {:>8} {:>8} {:>15} {:>21}",
        "layout", "nodes", "K", "N", "S", "base", "normal", "degraded paper", "degraded reconstructed"
    )?;
    for r in rows {
        let reconstructed = r.degraded_accuracy_reconstructed.map_or("-".to_string(), |a| format!("{a:.4}"));
        writeln!(
            out,
            "{:<14} {:<10} {:>3} {:>3} {:>3} {:>8.4} {:>8.4} {:>15.4} {:>21}",
            r.layout,
            r.nodes,
            r.k,
            r.n,
            r.stragglers,
            r.base_accuracy,
            r.normal_accuracy,
            r.degraded_accuracy_paper,
            reconstructed
        )?;
    }
    if let Some(r) = rows.first() {
        let outputs = serde_json::to_value(r.outputs)?;
        writeln!(
            out,
            "{} on {}, {} queries per setting, workers return {}. degraded paper: all K decoded from N - S \
             responders (ApproxIFER's protocol); degraded reconstructed: only predictions no responder held \
             unmixed (ParM's protocol).",
            r.model,
            r.dataset,
            r.queries,
            outputs.as_str().unwrap_or("?")
        )?;
    }
    Ok(())
}

fn write_byzantine_table(rows: &[ByzantineRow], out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:>3} {:>3} {:>3} {:>3} {:<14} {:<9} {:>9} {:>9} {:>9} {:>11} {:>7}",
        "K", "N", "S", "A", "attack", "locator", "detection", "false pos", "accuracy", "undefended", "base"
    )?;
    for r in rows {
        let detection = r.detection_rate.map_or("-".to_string(), |d| format!("{d:.4}"));
        writeln!(
            out,
            "{:>3} {:>3} {:>3} {:>3} {:<14} {:<9} {:>9} {:>9.4} {:>9.4} {:>11.4} {:>7.4}",
            r.k,
            r.n,
            r.stragglers,
            r.byzantine,
            r.attack,
            r.locator,
            detection,
            r.false_positive_rate,
            r.accuracy,
            r.undefended_accuracy,
            r.base_accuracy
        )?;
    }
    if let Some(r) = rows.first() {
        let outputs = serde_json::to_value(r.outputs)?;
        writeln!(
            out,
            "{} on {}, {} queries per setting, {} nodes, workers return {}. detection: liars located / liars; \
             false pos: honest responders removed / honest responders; accuracy: decoded without the located \
             workers; undefended: decoded from every responder, liars included.",
            r.model,
            r.dataset,
            r.queries,
            r.nodes,
            outputs.as_str().unwrap_or("?")
        )?;
    }
    Ok(())
}
