//! Privacy evaluation: what a private code's masks cost in accuracy and what they hide from
//! `T` colluding workers (issue 15; the masks are [`approxifer_kernels::privacy`]'s).
//!
//! Per `(K, S)` setting, `T`, mask placement and mask scale:
//! - **the cost**: ApproxIFER's accuracy with masks ([`EvalRow`]'s keys), next to the same code
//!   without masks (the same `N` and worker nodes, the same queries and stragglers);
//! - **the learnt attack**: the query position and the `T` workers that see it best
//!   ([`most_exposed`]) are attacked by a LeNet-5 that takes those workers' `T` coded queries
//!   as its `T` input planes, trained on coded groups of the training set (fresh images and
//!   masks every step) and tested on the evaluation's groups; next to the same attack on the
//!   code without masks;
//! - **the unlearnt attack**: the hosted model on the coded query of the worker whose node is
//!   nearest each query's node, over all positions.
//!
//! Attackers get the code, the coalition and unlimited training data: what they cannot know is
//! the masks.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::IndexedRandom;

use super::{EvalConfig, EvalError, EvalRow, default_nodes, evaluate_code, query_order};
use crate::data::Images;
use crate::kernels::privacy::{Exposure, MaskSampler, most_exposed};
use crate::kernels::{Code, CodeParams, Layout, MaskPlacement, cpu};
use crate::models::Classifier;
use crate::models::LeNet5;
use crate::train::{argmax_rows, normalised};

/// What to evaluate: the queries, hosted model and `(K, S)` settings of an [`EvalConfig`]
/// (non-systematic), each with every `T`, placement and mask scale.
#[derive(Clone, Debug)]
pub struct PrivacyConfig {
    pub eval: EvalConfig,
    /// `T` values (colluding workers), each at least 1.
    pub privacy: Vec<usize>,
    /// Mask standard deviations, in the queries' normalised units.
    pub sigmas: Vec<f64>,
    pub placements: Vec<MaskPlacement>,
    /// The learnt attacker's training; `None`: only the unlearnt attack is measured.
    pub attacker: Option<AttackerConfig>,
}

/// How the learnt attacker is trained.
#[derive(Clone, Debug)]
pub struct AttackerConfig {
    /// The images it trains on (the training set).
    pub images: Arc<Images>,
    /// Coded groups it sees per epoch.
    pub samples: usize,
    pub epochs: usize,
}

/// One setting's result; the JSON keys of `approxifer eval --privacy --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PrivacyRow {
    /// The private code's accuracy, as `eval` reports it.
    #[serde(flatten)]
    pub eval: EvalRow,
    pub privacy: usize,
    pub mask_sigma: f64,
    pub mask_placement: MaskPlacement,
    /// `degraded_accuracy_paper` of the same code without masks.
    pub degraded_accuracy_unmasked: f64,
    /// The query position the learnt attacker targets (the one `T` workers see best).
    pub exposed_query: usize,
    /// The `T` colluding workers it sees.
    pub colluders: Vec<usize>,
    /// The learnt attacker's accuracy on that query's class; `None` when not trained.
    pub attacker_accuracy: Option<f64>,
    /// The same attack on the code without masks (its own most exposed query and coalition).
    pub attacker_accuracy_unmasked: Option<f64>,
    /// The hosted model on the coded query of the worker nearest each query's node.
    pub nearest_attack_accuracy: f64,
    /// The same on the code without masks.
    pub nearest_attack_accuracy_unmasked: f64,
}

/// Attacker training: Adam at this rate, in batches of this many groups.
const ATTACKER_LEARNING_RATE: f64 = 1e-3;
const ATTACKER_BATCH: usize = 64;

/// Evaluates every setting; `progress(done, total)` counts rows, and `row_done` sees each row
/// as it is measured (a long sweep's results can be streamed).
pub fn evaluate_privacy(
    model: &Classifier,
    test: &Images,
    config: &PrivacyConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
    mut row_done: impl FnMut(&PrivacyRow),
) -> Result<Vec<PrivacyRow>, EvalError> {
    if config.privacy.contains(&0) {
        return Err(EvalError::Unsupported("--privacy values must be at least 1 (T = 0 is the code without masks)"));
    }
    if config.eval.settings.iter().any(|s| s.layout != Layout::NonSystematic) {
        return Err(EvalError::Unsupported("privacy needs the non-systematic layout"));
    }
    let eval = &config.eval;
    let total = eval.settings.len() * config.privacy.len() * config.placements.len() * config.sigmas.len();
    let mut rows = Vec::with_capacity(total);
    for setting in &eval.settings {
        let (k, s) = (setting.k, setting.stragglers);
        let nodes = eval.nodes.unwrap_or(default_nodes(Layout::NonSystematic));
        for &t in &config.privacy {
            // The code without masks at each N the placements need: its figures are shared.
            let mut unmasked: Vec<(usize, Unmasked)> = Vec::new();
            for &placement in &config.placements {
                let params = CodeParams::builder(k, k + t + s).stragglers(s).privacy(t).masks(placement).nodes(nodes);
                let code = Code::with_masked_workers(params)?;
                let n = code.params().workers();
                let at = match unmasked.iter().position(|(m, _)| *m == n) {
                    Some(at) => at,
                    None => {
                        let plain = Code::new(CodeParams::builder(k, n).stragglers(s).nodes(nodes).build()?)?;
                        unmasked.push((n, measure_unmasked(model, test, config, plain, t, device)?));
                        unmasked.len() - 1
                    }
                };
                let plain = &unmasked[at].1;
                for &sigma in &config.sigmas {
                    let mut sampler = MaskSampler::seeded(sigma, eval.seed)?;
                    let row = evaluate_code(model, test, eval, code.clone(), Some(&mut sampler), device, &mut |_| {})?;
                    let exposure = most_exposed(&code, t, sigma)?;
                    let mut attack_masks = MaskSampler::seeded(sigma, eval.seed.wrapping_add(1))?;
                    let nearest = nearest_attack(model, test, eval, &code, Some(&mut attack_masks), device)?;
                    let attacker = match &config.attacker {
                        Some(attacker) => {
                            Some(learnt_attack(test, eval, attacker, &code, &exposure, Some(sigma), device)?)
                        }
                        None => None,
                    };
                    let row = PrivacyRow {
                        eval: row,
                        privacy: t,
                        mask_sigma: sigma,
                        mask_placement: placement,
                        degraded_accuracy_unmasked: plain.degraded_accuracy,
                        exposed_query: exposure.query,
                        colluders: exposure.workers,
                        attacker_accuracy: attacker,
                        attacker_accuracy_unmasked: plain.attacker_accuracy,
                        nearest_attack_accuracy: nearest,
                        nearest_attack_accuracy_unmasked: plain.nearest_attack_accuracy,
                    };
                    row_done(&row);
                    rows.push(row);
                    progress(rows.len(), total);
                }
            }
        }
    }
    Ok(rows)
}

/// The figures of a code without masks that its private rows are compared with.
struct Unmasked {
    degraded_accuracy: f64,
    attacker_accuracy: Option<f64>,
    nearest_attack_accuracy: f64,
}

fn measure_unmasked(
    model: &Classifier,
    test: &Images,
    config: &PrivacyConfig,
    code: Code,
    colluders: usize,
    device: &Device,
) -> Result<Unmasked, EvalError> {
    let eval = &config.eval;
    let row = evaluate_code(model, test, eval, code.clone(), None, device, &mut |_| {})?;
    // Without masks the scale plays no part in the exposure.
    let exposure = most_exposed(&code, colluders, 1.0)?;
    let attacker_accuracy = match &config.attacker {
        Some(attacker) => Some(learnt_attack(test, eval, attacker, &code, &exposure, None, device)?),
        None => None,
    };
    Ok(Unmasked {
        degraded_accuracy: row.degraded_accuracy_paper,
        attacker_accuracy,
        nearest_attack_accuracy: nearest_attack(model, test, eval, &code, None, device)?,
    })
}

/// The evaluation's queries: those [`evaluate_code`] asks about, in its order.
fn evaluation_queries(test: &Images, config: &EvalConfig, k: usize) -> Vec<usize> {
    query_order(test, config, k, &mut rand::rngs::StdRng::seed_from_u64(config.seed))
}

/// The coded queries of `workers` for the groups of `images` (`[groups * workers.len(), D]`,
/// normalised), masks drawn from `masks` for a private code.
fn coded_rows(
    code: &Code,
    workers: &[usize],
    images: &Images,
    config: &EvalConfig,
    masks: Option<&mut MaskSampler>,
) -> Result<Vec<f32>, EvalError> {
    let k = code.params().queries();
    let row_len = images.image_len();
    let queries = normalised(images, 0..images.len(), config.dataset);
    let groups = images.len() / k;
    let drawn = match masks {
        Some(sampler) => sampler.masks(code, groups, row_len),
        None => Vec::new(),
    };
    let mut coded = vec![0.0; groups * workers.len() * row_len];
    cpu::encode_rows_masked(code, workers, &queries, &drawn, row_len, &mut coded)?;
    Ok(coded)
}

/// The unlearnt attack: the hosted model's accuracy on the coded query of the worker whose
/// node is nearest each query's node, over every query of the evaluation.
fn nearest_attack(
    model: &Classifier,
    test: &Images,
    config: &EvalConfig,
    code: &Code,
    mut masks: Option<&mut MaskSampler>,
    device: &Device,
) -> Result<f64, EvalError> {
    let k = code.params().queries();
    let beta = code.beta();
    let nearest: Vec<usize> = code
        .alpha()
        .iter()
        .map(|a| (0..beta.len()).min_by(|&x, &y| (beta[x] - a).abs().total_cmp(&(beta[y] - a).abs())).unwrap_or(0))
        .collect();
    let order = evaluation_queries(test, config, k);
    let mut correct = 0;
    for batch in order.chunks(config.batch_groups.max(1) * k) {
        let images = test.gather(batch);
        let coded = coded_rows(code, &nearest, &images, config, masks.as_deref_mut())?;
        let x = Tensor::<4>::from_data(TensorData::new(coded, [batch.len(), 1, images.rows, images.cols]), device);
        let predicted = argmax_rows(model.forward(x));
        // Row q of the batch is worker nearest[q % K]'s view of query q.
        correct += predicted.iter().zip(&images.labels).filter(|(p, l)| **p == usize::from(**l)).count();
    }
    Ok(correct as f64 / order.len().max(1) as f64)
}

/// The learnt attack: a LeNet-5 on the `T` coded queries of `exposure.workers`, trained to
/// name query `exposure.query`'s class, then its accuracy on the evaluation's groups. Masks
/// of scale `sigma` for a private code.
fn learnt_attack(
    test: &Images,
    config: &EvalConfig,
    attacker: &AttackerConfig,
    code: &Code,
    exposure: &Exposure,
    sigma: Option<f64>,
    device: &Device,
) -> Result<f64, EvalError> {
    let k = code.params().queries();
    let channels = exposure.workers.len();
    let train = &attacker.images;
    if train.len() < k {
        return Err(EvalError::Unsupported("the attacker's training set holds fewer images than one group"));
    }
    let (rows, cols) = (train.rows, train.cols);
    let sampler = |seed: u64| sigma.map(|s| MaskSampler::seeded(s, seed)).transpose();
    // One group of the training set per sample, with the target's label.
    let batch_of = |indices: &[usize], masks: Option<&mut MaskSampler>, device: &Device| {
        let images = train.gather(indices);
        let coded = coded_rows(code, &exposure.workers, &images, config, masks)?;
        let labels: Vec<i64> = images.labels.chunks_exact(k).map(|group| i64::from(group[exposure.query])).collect();
        let groups = labels.len();
        let x = Tensor::<4>::from_data(TensorData::new(coded, [groups, channels, rows, cols]), device);
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [groups]), device);
        Ok::<_, EvalError>((x, y))
    };

    device.seed(config.seed);
    let autodiff = device.clone().autodiff();
    let mut net = LeNet5::with_channels(channels, &autodiff);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed.wrapping_add(2));
    let mut train_masks = sampler(config.seed.wrapping_add(3))?;
    let all: Vec<usize> = (0..train.len()).collect();
    let steps = attacker.samples.div_ceil(ATTACKER_BATCH);
    for _ in 0..attacker.epochs * steps {
        let indices: Vec<usize> = all.choose_multiple(&mut rng, ATTACKER_BATCH * k).copied().collect();
        let (x, y) = batch_of(&indices, train_masks.as_mut(), &autodiff)?;
        let loss = loss_fn.forward(net.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optimizer.step(ATTACKER_LEARNING_RATE, net, grads);
    }

    let net = net.valid();
    let mut test_masks = sampler(config.seed.wrapping_add(4))?;
    let order = evaluation_queries(test, config, k);
    let (mut correct, mut groups) = (0, 0);
    for batch in order.chunks(config.batch_groups.max(1) * k) {
        let images = test.gather(batch);
        let coded = coded_rows(code, &exposure.workers, &images, config, test_masks.as_mut())?;
        let b = batch.len() / k;
        let x = Tensor::<4>::from_data(TensorData::new(coded, [b, channels, rows, cols]), device);
        let predicted = argmax_rows(net.forward(x));
        let labels = images.labels.chunks_exact(k).map(|group| usize::from(group[exposure.query]));
        correct += predicted.iter().zip(labels).filter(|(p, l)| **p == *l).count();
        groups += b;
    }
    Ok(correct as f64 / groups.max(1) as f64)
}
