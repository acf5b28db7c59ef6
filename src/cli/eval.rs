//! `approxifer eval`: accuracy of coded inference over a grid of K, S and layouts.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::attack::Attack;
use crate::data::{self, Dataset, Split};
use crate::eval::{
    AttackerConfig, ByzantineConfig, ByzantineRow, CalibrationSource, EvalConfig, EvalRow, Outputs, PrivacyConfig,
    PrivacyRow, Setting, evaluate, evaluate_byzantine, evaluate_parm, evaluate_privacy,
};
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::locate::calibrated::DEFAULT_FALSE_ALARM;
use crate::kernels::{Layout, MaskPlacement, NodeFamily};
use crate::models::Architecture;

/// The mask scales `eval --privacy` sweeps unless told.
const DEFAULT_MASK_SIGMAS: [f64; 5] = [0.5, 2.0, 8.0, 32.0, 128.0];

/// Which layouts to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum LayoutChoice {
    NonSystematic,
    Systematic,
    Both,
}

/// The schemes `eval` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(super) enum EvalScheme {
    /// Berrut-coded queries, decoded from the N - S responders.
    Approxifer,
    /// ParM: K raw queries and a parity model on their sum (S = 1 settings).
    Parm,
}

#[derive(Debug, Args)]
pub(super) struct EvalArgs {
    /// The schemes, comma-separated [default: approxifer,parm; ParM where a parity model
    /// exists for the K]
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    scheme: Vec<EvalScheme>,
    /// ParM's parity model for the one --k given (what `approxifer train-parity` writes)
    /// [default: the shipped one for the hosted model, dataset and K]
    #[arg(long, value_name = "FILE", conflicts_with = "parity_dir")]
    parity: Option<PathBuf>,
    /// A folder of parity models named ARCH-DATASET-kK.bpk (e.g. lenet5-fashion-mnist-k8.bpk).
    #[arg(long, value_name = "DIR")]
    parity_dir: Option<PathBuf>,
    /// The dataset (from scripts/fetch-data.sh).
    #[arg(long, value_enum, default_value_t = Dataset::Mnist)]
    dataset: Dataset,
    /// The architecture of the hosted model [default: the dataset's: digit-cnn for MNIST,
    /// lenet5 for Fashion-MNIST]
    #[arg(long, value_enum)]
    model: Option<Architecture>,
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
    /// random, constant, targeted, colluding, rotate, swap-top [default: none and all of the
    /// others, with gaussian-1, gaussian-10 and gaussian-100]
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "byzantine")]
    attack: Option<Vec<Attack>>,
    /// With --byzantine, worker counts N to measure, comma-separated (the redundancy curve;
    /// values below an A's least are left out of it) [default: the least, 2K + 2A + S - 1]
    #[arg(long = "n", value_name = "LIST", value_delimiter = ',', requires = "byzantine")]
    workers: Vec<usize>,
    /// With --byzantine, the calibrated locator's calibrations (what `approxifer calibrate`
    /// writes: each setting uses the one for its code) [default: learnt per setting from the
    /// training set]
    #[arg(long, value_name = "FILE", requires = "byzantine", conflicts_with = "calibration_groups")]
    calibration: Option<PathBuf>,
    /// With --byzantine, honest training groups the calibrated locator learns from per setting
    /// (0: do not measure it).
    #[arg(long, value_name = "G", default_value_t = 1000, requires = "byzantine")]
    calibration_groups: usize,
    /// With --byzantine, the calibrated locator's false-alarm probability per honest answer.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_FALSE_ALARM, requires = "byzantine")]
    false_alarm: f64,
    /// Colluding workers T, one or more: measure private codes instead (T masks per group;
    /// N = K + T + S, or the next N whose worker nodes all avoid the query nodes): their
    /// accuracy next to the same code without masks, and two attacks on the queries.
    #[arg(long, value_name = "T", value_delimiter = ',', conflicts_with_all = ["byzantine", "scheme", "parity", "parity_dir"])]
    privacy: Option<Vec<usize>>,
    /// With --privacy, the mask scales, comma-separated: standard deviations in the queries'
    /// normalised units [default: 0.5,2,8,32,128]
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "privacy")]
    mask_sigma: Vec<f64>,
    /// With --privacy, where the masks' nodes sit, comma-separated: tail (the authors'),
    /// interleaved [default: both]
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "privacy")]
    mask_placement: Vec<MaskPlacement>,
    /// With --privacy, coded training groups the learnt attacker (a LeNet-5 on the colluders'
    /// coded queries) sees per epoch (0: only the nearest-worker attack).
    #[arg(long, value_name = "G", default_value_t = 20_000, requires = "privacy")]
    attacker_samples: usize,
    /// With --privacy, the learnt attacker's epochs.
    #[arg(long, default_value_t = 2, requires = "privacy")]
    attacker_epochs: usize,
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
    /// Also draw accuracy against K and against S into this SVG file (with --byzantine: the
    /// calibrated locator's detection and false positives against N).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// The data directory [default: $APPROXIFER_DATA, else ./data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Adapter: auto (a GPU, else Burn's CPU backend), discrete, integrated, cpu (a CPU Vulkan
    /// driver such as lavapipe), or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<AdapterChoice>,
    /// Print one JSON object per setting instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: &EvalArgs, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.byzantine.is_none() || matches!(args.layout, None | Some(LayoutChoice::NonSystematic)),
        "--byzantine evaluates the non-systematic layout only"
    );
    anyhow::ensure!(
        args.byzantine.is_none() || args.plot.is_none() || args.calibration.is_some() || args.calibration_groups > 0,
        "--plot draws the calibrated locator's curve; --calibration-groups 0 leaves it out"
    );
    anyhow::ensure!(args.k.iter().all(|&k| k >= 1), "--k values must be at least 1");
    anyhow::ensure!(
        args.privacy.as_ref().is_none_or(|t| t.iter().all(|&t| t >= 1)),
        "--privacy values must be at least 1 (T = 0 is the code without masks)"
    );
    anyhow::ensure!(
        args.mask_sigma.iter().all(|&s| s.is_finite() && s > 0.0),
        "--mask-sigma values must be finite and > 0"
    );
    anyhow::ensure!(
        args.privacy.is_none() || matches!(args.layout, None | Some(LayoutChoice::NonSystematic)),
        "--privacy evaluates the non-systematic layout only: the systematic one sends raw queries"
    );
    let explicit = !args.scheme.is_empty();
    let schemes = if explicit { args.scheme.clone() } else { vec![EvalScheme::Approxifer, EvalScheme::Parm] };
    anyhow::ensure!(
        args.byzantine.is_none() || !(explicit && schemes.contains(&EvalScheme::Parm)),
        "--byzantine evaluates ApproxIFER's locators; ParM has none"
    );
    anyhow::ensure!(args.parity.is_none() || args.k.len() == 1, "--parity is one K's parity model: give one --k");
    anyhow::ensure!(args.queries >= 1, "--queries must be at least 1");
    let dir = args.data.clone().unwrap_or_else(data::default_dir);
    let burn = super::model_device(args.adapter.as_ref())?;
    let device = burn.device.clone();
    let (architecture, model) =
        super::model::hosted_for(args.dataset, args.model, args.weights.as_deref(), &dir, &device)?;
    let test = data::load(&dir, args.dataset, Split::Test)?;
    let plot = args.plot.as_deref().map(super::output::Staged::new).transpose()?;
    // Said once the settings are known good (a bad one is refused in one line).
    let notice = || eprintln!("{}", burn.notice());
    let byzantine = args.byzantine.is_some();
    let private = args.privacy.is_some();
    // The Byzantine evaluation runs the non-systematic layout, without stragglers, on logits
    // unless told otherwise; the privacy evaluation the non-systematic layout, with S = 1.
    let only_mixed = byzantine || private;
    let layouts: &[Layout] =
        match args.layout.unwrap_or(if only_mixed { LayoutChoice::NonSystematic } else { LayoutChoice::Both }) {
            LayoutChoice::NonSystematic => &[Layout::NonSystematic],
            LayoutChoice::Systematic => &[Layout::Systematic],
            LayoutChoice::Both => &[Layout::NonSystematic, Layout::Systematic],
        };
    let default_stragglers: &[usize] = if byzantine {
        &[0]
    } else if private {
        &[1]
    } else {
        &[1, 2, 3]
    };
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
        model: architecture.name().into(),
        settings,
        queries: args.queries,
        batch_groups: args.batch_groups,
        outputs: args.outputs.unwrap_or(if byzantine { Outputs::Logits } else { Outputs::Softmax }),
        nodes: args.nodes,
        seed: args.seed,
    };
    if let Some(privacy) = &args.privacy {
        let config = PrivacyConfig {
            eval: config,
            privacy: privacy.clone(),
            sigmas: if args.mask_sigma.is_empty() { DEFAULT_MASK_SIGMAS.to_vec() } else { args.mask_sigma.clone() },
            placements: if args.mask_placement.is_empty() {
                MaskPlacement::ALL.to_vec()
            } else {
                args.mask_placement.clone()
            },
            attacker: (args.attacker_samples > 0 && args.attacker_epochs > 0)
                .then(|| -> anyhow::Result<_> {
                    Ok(AttackerConfig {
                        images: Arc::new(data::load(&dir, args.dataset, Split::Train)?),
                        samples: args.attacker_samples,
                        epochs: args.attacker_epochs,
                    })
                })
                .transpose()?,
        };
        notice();
        // JSON rows go out as they are measured (a sweep takes minutes per row on a CPU).
        let mut written: std::io::Result<()> = Ok(());
        let rows = with_progress(|progress| {
            evaluate_privacy(&model, &test, &config, &device, progress, |row| {
                if args.json && written.is_ok() {
                    written = serde_json::to_writer(&mut *out, row)
                        .map_err(std::io::Error::from)
                        .and_then(|()| writeln!(out))
                        .and_then(|()| out.flush());
                }
            })
        })?;
        written?;
        if !args.json {
            write_privacy_table(&rows, out)?;
        }
        if let Some(plot) = plot {
            crate::plot::privacy_svg(&rows, plot.path())?;
            plot.persist()?;
        }
        return Ok(());
    }
    if let Some(byzantine) = &args.byzantine {
        let attacks = args.attack.clone().unwrap_or_else(|| std::iter::once(Attack::None).chain(Attack::ALL).collect());
        let calibration = if let Some(path) = &args.calibration {
            Some(CalibrationSource::Given(crate::calibration_file::read(path)?))
        } else if args.calibration_groups > 0 {
            let images = Arc::new(data::load(&dir, args.dataset, Split::Train)?);
            Some(CalibrationSource::Learn { images, groups: args.calibration_groups, false_alarm: args.false_alarm })
        } else {
            None
        };
        let config = ByzantineConfig {
            eval: config,
            byzantine: byzantine.clone(),
            workers: args.workers.clone(),
            attacks,
            calibration,
        };
        config.codes()?;
        notice();
        let rows = with_progress(|progress| evaluate_byzantine(&model, &test, &config, &device, progress))?;
        if args.json {
            super::write_json_lines(&rows, out)?;
        } else {
            write_byzantine_table(&rows, out)?;
        }
        if let Some(plot) = plot {
            crate::plot::redundancy_svg(&rows, plot.path())?;
            plot.persist()?;
        }
        return Ok(());
    }
    notice();
    let mut rows = if schemes.contains(&EvalScheme::Approxifer) {
        evaluate_with_progress(&model, &test, &config, &device)?
    } else {
        Vec::new()
    };
    if schemes.contains(&EvalScheme::Parm) {
        let stragglers = args.stragglers.as_deref().unwrap_or(default_stragglers);
        anyhow::ensure!(
            !explicit || stragglers.contains(&1),
            "ParM rebuilds one missing prediction per group: its settings have S = 1; add 1 to --stragglers"
        );
        let mut ks = args.k.clone();
        ks.dedup();
        for &k in ks.iter().filter(|_| stragglers.contains(&1)) {
            let Some(parity) = parity_model(args, architecture, k, &device)? else {
                let message = format!(
                    "no parity model for {} on {} at K = {k} (shipped: K = {:?}); `approxifer train-parity` \
                     trains one, --parity or --parity-dir names it",
                    architecture.name(),
                    args.dataset.name(),
                    crate::embedded::parity_ks(architecture, args.dataset)
                );
                anyhow::ensure!(!explicit, "{message}");
                eprintln!("approxifer: ParM not evaluated at K = {k}: {message}");
                continue;
            };
            let row = with_progress(|progress| evaluate_parm(&model, &parity, k, &test, &config, &device, progress))?;
            // Next to ApproxIFER's S = 1 rows of the same K.
            let at = rows.iter().rposition(|r| r.k == k && r.stragglers == 1).map_or(rows.len(), |i| i + 1);
            rows.insert(at, row);
        }
    }
    if args.json {
        super::write_json_lines(&rows, out)?;
    } else {
        write_table(&rows, out)?;
    }
    if let (Some(plot), Some(path)) = (plot, &args.plot) {
        crate::plot::accuracy_svg(&rows, plot.path())?;
        plot.persist()?;
        eprintln!("approxifer: plot written to {}", path.display());
    }
    Ok(())
}

/// ParM's parity model for `k`: --parity, else --parity-dir's, else the shipped one; `None`
/// when there is none.
fn parity_model(
    args: &EvalArgs,
    architecture: Architecture,
    k: usize,
    device: &burn::tensor::Device,
) -> anyhow::Result<Option<crate::models::Classifier>> {
    if let Some(path) = &args.parity {
        return Ok(Some(crate::models::load(architecture, path, device)?));
    }
    if let Some(dir) = &args.parity_dir {
        let path = dir.join(format!("{}-{}-k{k}.bpk", architecture.name(), args.dataset.name()));
        return Ok(path.exists().then(|| crate::models::load(architecture, &path, device)).transpose()?);
    }
    Ok(crate::embedded::parity(architecture, args.dataset, k, device).transpose()?)
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
        "{:<10} {:<14} {:<10} {:>3} {:>3} {:>3} {:>8} {:>8} {:>15} {:>21}",
        "scheme", "layout", "nodes", "K", "N", "S", "base", "normal", "degraded paper", "degraded reconstructed"
    )?;
    for r in rows {
        let reconstructed = r.degraded_accuracy_reconstructed.map_or("-".to_string(), |a| format!("{a:.4}"));
        writeln!(
            out,
            "{:<10} {:<14} {:<10} {:>3} {:>3} {:>3} {:>8.4} {:>8.4} {:>15.4} {:>21}",
            r.scheme,
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
    if let Some(r) = rows.iter().find(|r| r.scheme == "approxifer").or(rows.first()) {
        let outputs = serde_json::to_value(r.outputs)?;
        writeln!(
            out,
            "{} on {}, {} queries per setting, ApproxIFER's workers return {}. degraded paper: all K decoded \
             from N - S responders (ApproxIFER's protocol); degraded reconstructed: only predictions no \
             responder held unmixed (ParM's protocol: for parm, each member of each group erased in turn and \
             rebuilt from the parity model's output).",
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

fn write_privacy_table(rows: &[PrivacyRow], out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:>3} {:>3} {:>3} {:>3} {:<12} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "K",
        "N",
        "S",
        "T",
        "masks",
        "sigma",
        "base",
        "degraded",
        "(no mask)",
        "attacker",
        "(no mask)",
        "nearest",
        "(no mask)"
    )?;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    for r in rows {
        writeln!(
            out,
            "{:>3} {:>3} {:>3} {:>3} {:<12} {:>6} {:>8.4} {:>9.4} {:>9.4} {:>9} {:>9} {:>9.4} {:>9.4}",
            r.eval.k,
            r.eval.n,
            r.eval.stragglers,
            r.privacy,
            r.mask_placement.name(),
            r.mask_sigma,
            r.eval.base_accuracy,
            r.eval.degraded_accuracy_paper,
            r.degraded_accuracy_unmasked,
            opt(r.attacker_accuracy),
            opt(r.attacker_accuracy_unmasked),
            r.nearest_attack_accuracy,
            r.nearest_attack_accuracy_unmasked
        )?;
    }
    if let Some(r) = rows.first() {
        let outputs = serde_json::to_value(r.eval.outputs)?;
        writeln!(
            out,
            "{} on {}, {} queries per setting, {} nodes, workers return {}. degraded: decoded from N - S \
             responders; attacker: a LeNet-5 trained on the T colluders' coded queries naming the class of \
             the query they see best; nearest: the hosted model on the coded query of the worker nearest each \
             query's node; (no mask): the same code without masks. Chance is 0.1.",
            r.eval.model,
            r.eval.dataset,
            r.eval.queries,
            r.eval.nodes,
            outputs.as_str().unwrap_or("?")
        )?;
    }
    Ok(())
}
