//! Byzantine evaluation: how well each [`Locator`] finds liars under each [`Attack`], and
//! what accuracy is left, on a real model's answers (ALGORITHM.md, "Byzantine-robust
//! decoding"; the paper's setting is `K = 12`, `S = 0`, `N = 2K + 2A + S - 1`).
//!
//! Per setting (`K`, `S`, `A` and each `N`), the calibrated locator is first learnt from honest
//! coded training traffic (or read from a file). Per group: `K` random test inputs are encoded
//! and run through the model on the device (the honest answers, computed once per setting);
//! then, per attack, `S` random stragglers and `A` random liars among the responders; the
//! liars' rows are corrupted on the host; each locator removes its suspects and the group is
//! decoded from the rest ([`cpu::decode_located`]: the calibrated locator first fills the
//! missing rows with its predictions).

use std::sync::Arc;

use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::calibrate::{CalibrateConfig, MAX_CODED_BATCH, calibrate, coded_answers, coded_runner};
use super::{EvalConfig, EvalError, Outputs, default_nodes};
use crate::attack::Attack;
use crate::calibration_file::Calibrations;
use crate::data::Images;
use crate::demo::argmax;
use crate::kernels::{Code, CodeParams, Layout, Locator, cpu, locate};
use crate::models::Classifier;
use crate::train::{argmax_rows, image_tensor};

/// What to evaluate: the queries, model and `(K, S)` settings of an [`EvalConfig`] (whose
/// layouts must be non-systematic), each with every `A` of `byzantine`, every `N` of
/// `workers` and every attack.
#[derive(Clone, Debug)]
pub struct ByzantineConfig {
    pub eval: EvalConfig,
    /// `A` values.
    pub byzantine: Vec<usize>,
    /// `N` values; empty for the least each `(K, S, A)` allows, `2K + 2A + S - 1`. Values
    /// below a setting's least are left out of it (one list serves every `A`); a setting left
    /// with none is an error.
    pub workers: Vec<usize>,
    pub attacks: Vec<Attack>,
    /// Where the calibrated locator comes from; `None`: it is not measured.
    pub calibration: Option<CalibrationSource>,
}

/// The calibrated locator's calibration in a Byzantine evaluation.
#[derive(Clone, Debug)]
pub enum CalibrationSource {
    /// A file's calibrations: each setting uses the one learnt for its code (a setting the
    /// file has none for is an error that says what differs).
    Given(Calibrations),
    /// Learnt per setting from these images (the training set) before measuring.
    Learn { images: Arc<Images>, groups: usize, false_alarm: f64 },
}

/// One (setting, attack, locator) result; the JSON keys of `approxifer eval --byzantine --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ByzantineRow {
    pub dataset: String,
    pub model: String,
    pub k: usize,
    pub n: usize,
    pub stragglers: usize,
    pub byzantine: usize,
    pub nodes: String,
    pub outputs: Outputs,
    pub attack: String,
    pub locator: String,
    /// Liars located / liars; `None` when nobody lied (attack `none`).
    pub detection_rate: Option<f64>,
    /// Honest responders removed / honest responders.
    pub false_positive_rate: f64,
    /// Decoded argmax equal to the label, after the locator's removals.
    pub accuracy: f64,
    /// The same, decoding from every responder, liars included (no locator).
    pub undefended_accuracy: f64,
    /// The model on the raw queries.
    pub base_accuracy: f64,
    pub queries: usize,
}

#[derive(Default, Clone)]
struct Tally {
    liars: usize,
    located_liars: usize,
    honest: usize,
    removed_honest: usize,
    correct: usize,
}

impl ByzantineConfig {
    /// Every setting's code, in the order they are measured; an error for a setting no code
    /// can serve, or (with a calibration file) one the file has no calibration for. What
    /// [`evaluate_byzantine`] checks before it measures anything.
    pub fn codes(&self) -> Result<Vec<Code>, EvalError> {
        let eval = &self.eval;
        if eval.settings.iter().any(|s| s.layout != Layout::NonSystematic) {
            return Err(EvalError::Unsupported("Byzantine evaluation runs the non-systematic layout only"));
        }
        let nodes = eval.nodes.unwrap_or(default_nodes(Layout::NonSystematic));
        let mut codes = Vec::new();
        for setting in &eval.settings {
            for &a in &self.byzantine {
                let least = CodeParams::workers_needed(setting.k, setting.stragglers, a);
                let workers: Vec<usize> = if self.workers.is_empty() {
                    vec![least]
                } else {
                    self.workers.iter().copied().filter(|&n| n >= least).collect()
                };
                if workers.is_empty() {
                    return Err(EvalError::NoWorkerCount { least, k: setting.k, byzantine: a });
                }
                for n in workers {
                    let params =
                        CodeParams::builder(setting.k, n).stragglers(setting.stragglers).byzantine(a).nodes(nodes);
                    codes.push(Code::new(params.build()?)?);
                }
            }
        }
        // The rows' length is checked as they are located.
        if let Some(CalibrationSource::Given(calibrations)) = &self.calibration {
            for code in &codes {
                let calibration = calibrations.for_code(code);
                calibration.check(code, calibration.row_len)?;
            }
        }
        Ok(codes)
    }
}

/// Evaluates every setting, attack and locator; `progress(done, total)` counts groups (those
/// calibrated on, then those measured).
pub fn evaluate_byzantine(
    model: &Classifier,
    test: &Images,
    config: &ByzantineConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<ByzantineRow>, EvalError> {
    let (eval, attacks) = (&config.eval, &config.attacks);
    let codes = config.codes()?;
    let nodes = eval.nodes.unwrap_or(default_nodes(Layout::NonSystematic));
    let queries = eval.queries.min(test.len());
    let learning = match &config.calibration {
        Some(CalibrationSource::Learn { groups, .. }) => *groups,
        _ => 0,
    };
    let total: usize = codes.iter().map(|code| learning + queries / code.params().queries()).sum();
    let mut done = 0;
    let mut rows = Vec::new();
    for code in &codes {
        let (k, n) = (code.params().queries(), code.params().workers());
        let (stragglers, byzantine) = (code.params().stragglers(), code.params().byzantine());
        let groups = queries / k;
        if groups == 0 {
            return Err(EvalError::TooFewQueries { queries, k, available: test.len() });
        }
        let mut locators = Vec::new();
        match &config.calibration {
            Some(CalibrationSource::Given(calibrations)) => {
                locators.push(Locator::Calibrated(calibrations.for_code(code)))
            }
            Some(CalibrationSource::Learn { images, groups, false_alarm }) => {
                let learn = CalibrateConfig {
                    dataset: eval.dataset,
                    groups: *groups,
                    outputs: eval.outputs,
                    false_alarm: *false_alarm,
                    batch_groups: eval.batch_groups,
                    seed: eval.seed,
                };
                let start = done;
                let calibration = calibrate(model, images, code, &learn, device, |d, _| progress(start + d, total))?;
                done += groups;
                locators.push(Locator::Calibrated(Arc::new(calibration)));
            }
            None => {}
        }
        locators.extend(Locator::UNCALIBRATED);
        let outputs = eval.outputs;
        let runner = coded_runner(model, code, outputs, device)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(eval.seed);
        let mut order: Vec<usize> = (0..test.len()).collect();
        order.shuffle(&mut rng);
        order.truncate(groups * k);

        let mut base_correct = 0;
        let mut undefended = vec![0usize; attacks.len()];
        let mut tallies = vec![vec![Tally::default(); locators.len()]; attacks.len()];
        // Coded batches are N/K times the queries: keep one forward pass within what the
        // plain evaluation runs.
        let batch_groups = eval.batch_groups.min(MAX_CODED_BATCH / n).max(1);
        for batch in order.chunks(batch_groups * k) {
            let b = batch.len() / k;
            let images = test.gather(batch);
            let labels: Vec<usize> = images.labels.iter().map(|&l| usize::from(l)).collect();
            let x = image_tensor(&images, 0..batch.len(), eval.dataset, device);
            let base = argmax_rows(model.forward(x.clone()));
            base_correct += base.iter().zip(&labels).filter(|(p, l)| p == l).count();
            let (honest, classes) = coded_answers(&runner, x)?;

            for (a, &attack) in attacks.iter().enumerate() {
                let (answers, masks, liars) = corrupt(&honest, b, n, classes, stragglers, byzantine, attack, &mut rng);
                let correct = |decoded: &[f32]| -> usize {
                    decoded.chunks_exact(classes).zip(&labels).filter(|(row, l)| argmax(row) == **l).count()
                };
                undefended[a] += correct(&cpu::decode_to_vec(code, &answers, classes, &masks)?);
                let mut decoded = vec![0.0; b * k * classes];
                for (l, locator) in locators.iter().enumerate() {
                    let location = locate(code, locator, &answers, classes, &masks)?;
                    let tally = &mut tallies[a][l];
                    for ((found, bad), mask) in location.located.iter().zip(&liars).zip(masks.chunks_exact(n)) {
                        let hits = found.iter().filter(|w| bad.contains(w)).count();
                        tally.liars += bad.len();
                        tally.located_liars += hits;
                        tally.honest += mask.iter().filter(|&&m| m).count() - bad.len();
                        tally.removed_honest += found.len() - hits;
                    }
                    cpu::decode_located(code, locator, &answers, classes, &location.masks, &mut decoded)?;
                    tally.correct += correct(&decoded);
                }
            }
            done += b;
            progress(done, total);
        }
        let count = groups * k;
        let rate = |correct: usize| correct as f64 / count as f64;
        for (a, attack) in attacks.iter().enumerate() {
            for (l, locator) in locators.iter().enumerate() {
                let t = &tallies[a][l];
                rows.push(ByzantineRow {
                    dataset: eval.dataset.name().into(),
                    model: eval.model.clone(),
                    k,
                    n,
                    stragglers,
                    byzantine,
                    nodes: nodes.name().into(),
                    outputs,
                    attack: attack.name(),
                    locator: locator.name().into(),
                    detection_rate: (t.liars > 0).then(|| t.located_liars as f64 / t.liars as f64),
                    false_positive_rate: t.removed_honest as f64 / t.honest.max(1) as f64,
                    accuracy: rate(t.correct),
                    undefended_accuracy: rate(undefended[a]),
                    base_accuracy: rate(base_correct),
                    queries: count,
                });
            }
        }
    }
    Ok(rows)
}

/// The answers of `groups` groups after `attack`: `S` stragglers and `A` liars (`None`: no
/// liars) drawn per group. Returns the answers, the responder masks and each group's liars.
#[allow(clippy::too_many_arguments)]
fn corrupt(
    honest: &[f32],
    groups: usize,
    n: usize,
    classes: usize,
    stragglers: usize,
    byzantine: usize,
    attack: Attack,
    rng: &mut impl rand::Rng,
) -> (Vec<f32>, Vec<bool>, Vec<Vec<usize>>) {
    let mut answers = honest.to_vec();
    let mut masks = vec![true; groups * n];
    let mut liars = Vec::with_capacity(groups);
    let workers: Vec<usize> = (0..n).collect();
    for (mask, rows) in masks.chunks_exact_mut(n).zip(answers.chunks_exact_mut(n * classes)) {
        let mut drawn: Vec<usize> = workers.choose_multiple(rng, stragglers + byzantine).copied().collect();
        let bad = drawn.split_off(stragglers);
        drawn.iter().for_each(|&w| mask[w] = false);
        if attack == Attack::None {
            liars.push(Vec::new());
            continue;
        }
        let mut by_worker: Vec<Option<&mut [f32]>> = rows.chunks_exact_mut(classes).map(Some).collect();
        let mut targets: Vec<&mut [f32]> = bad.iter().filter_map(|&w| by_worker[w].take()).collect();
        attack.corrupt(&mut targets, rng);
        liars.push(bad);
    }
    (answers, masks, liars)
}
