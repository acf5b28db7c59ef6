//! Byzantine evaluation: how well each [`Locator`] finds liars under each [`Attack`], and
//! what accuracy is left, on a real model's answers (ALGORITHM.md, "Byzantine-robust
//! decoding"; the paper's setting is `K = 12`, `S = 0`, `N = 2K + 2A + S - 1`).
//!
//! Per group: `K` random test inputs are encoded and run through the model on the device (the
//! honest answers, computed once per setting); then, per attack, `S` random stragglers and `A`
//! random liars among the responders; the liars' rows are corrupted on the host; each locator
//! removes its suspects and the group is decoded from the rest.

use burn::tensor::{Device, Tensor, activation};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::{EvalConfig, EvalError, Outputs, default_nodes};
use crate::attack::Attack;
use crate::data::Images;
use crate::demo::argmax;
use crate::fused::{CodedRunner, FusedCode};
use crate::kernels::{Code, CodeParams, Layout, Locator, cpu, locate};
use crate::models::Classifier;
use crate::train::{argmax_rows, image_tensor};

/// The most coded queries one forward pass takes.
const MAX_CODED_BATCH: usize = 960;

/// What to evaluate: the queries, model and `(K, S)` settings of an [`EvalConfig`] (whose
/// layouts must be non-systematic), each with every `A` of `byzantine` and every attack.
#[derive(Clone, Debug)]
pub struct ByzantineConfig {
    pub eval: EvalConfig,
    /// `A` values; `N = 2K + 2A + S - 1` for each.
    pub byzantine: Vec<usize>,
    pub attacks: Vec<Attack>,
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

/// Evaluates every setting, attack and locator; `progress(done, total)` counts groups.
pub fn evaluate_byzantine(
    model: &Classifier,
    test: &Images,
    config: &ByzantineConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<ByzantineRow>, EvalError> {
    let (eval, attacks) = (&config.eval, &config.attacks);
    if eval.settings.iter().any(|s| s.layout != Layout::NonSystematic) {
        return Err(EvalError::Unsupported("Byzantine evaluation runs the non-systematic layout only"));
    }
    let queries = eval.queries.min(test.len());
    let settings: Vec<(usize, usize, usize)> =
        eval.settings.iter().flat_map(|s| config.byzantine.iter().map(move |&a| (s.k, s.stragglers, a))).collect();
    let total: usize = settings.iter().map(|&(k, _, _)| queries / k).sum();
    let mut done = 0;
    let mut rows = Vec::new();
    for &(k, stragglers, byzantine) in &settings {
        let groups = queries / k;
        if groups == 0 {
            return Err(EvalError::TooFewQueries { queries, k, available: test.len() });
        }
        let n = CodeParams::workers_needed(k, stragglers, byzantine);
        let nodes = eval.nodes.unwrap_or(default_nodes(Layout::NonSystematic));
        let code =
            Code::new(CodeParams::builder(k, n).stragglers(stragglers).byzantine(byzantine).nodes(nodes).build()?)?;
        let erasure = code.erasure_code()?;
        let outputs = eval.outputs;
        let hosted = |x: Tensor<4>| match outputs {
            Outputs::Softmax => activation::softmax(model.forward(x), 1),
            Outputs::Logits => model.forward(x),
        };
        let runner = CodedRunner::new(hosted, FusedCode::new(code.clone())?, device.clone())?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(eval.seed);
        let mut order: Vec<usize> = (0..test.len()).collect();
        order.shuffle(&mut rng);
        order.truncate(groups * k);

        let mut base_correct = 0;
        let mut undefended = vec![0usize; attacks.len()];
        let mut tallies = vec![vec![Tally::default(); Locator::ALL.len()]; attacks.len()];
        // Coded batches are N/K times the queries: keep one forward pass within what the
        // plain evaluation runs (a lavapipe storage binding holds 128 MiB).
        let batch_groups = eval.batch_groups.min(MAX_CODED_BATCH / n).max(1);
        for batch in order.chunks(batch_groups * k) {
            let b = batch.len() / k;
            let images = test.gather(batch);
            let labels: Vec<usize> = images.labels.iter().map(|&l| usize::from(l)).collect();
            let x = image_tensor(&images, 0..batch.len(), eval.dataset, device);
            let base = argmax_rows(model.forward(x.clone()));
            base_correct += base.iter().zip(&labels).filter(|(p, l)| p == l).count();
            let honest = runner.forward(runner.encode(x)?);
            let classes = honest.dims()[1];
            let honest = honest
                .try_into_data()
                .map_err(|e| EvalError::Data(format!("{e:?}")))?
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| EvalError::Data(format!("{e:?}")))?;

            for (a, &attack) in attacks.iter().enumerate() {
                let (answers, masks, liars) = corrupt(&honest, b, n, classes, stragglers, byzantine, attack, &mut rng);
                let correct = |masks: &[bool], code: &Code| -> Result<usize, EvalError> {
                    let decoded = cpu::decode_to_vec(code, &answers, classes, masks)?;
                    Ok(decoded.chunks_exact(classes).zip(&labels).filter(|(row, l)| argmax(row) == **l).count())
                };
                undefended[a] += correct(&masks, &code)?;
                for (l, &locator) in Locator::ALL.iter().enumerate() {
                    let location = locate(&code, locator, &answers, classes, &masks)?;
                    let tally = &mut tallies[a][l];
                    for ((found, bad), mask) in location.located.iter().zip(&liars).zip(masks.chunks_exact(n)) {
                        let hits = found.iter().filter(|w| bad.contains(w)).count();
                        tally.liars += bad.len();
                        tally.located_liars += hits;
                        tally.honest += mask.iter().filter(|&&m| m).count() - bad.len();
                        tally.removed_honest += found.len() - hits;
                    }
                    tally.correct += correct(&location.masks, &erasure)?;
                }
            }
            done += b;
            progress(done, total);
        }
        let count = groups * k;
        let rate = |correct: usize| correct as f64 / count as f64;
        for (a, attack) in attacks.iter().enumerate() {
            for (l, locator) in Locator::ALL.iter().enumerate() {
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
