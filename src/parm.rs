//! ParM (Kosaian et al., SOSP 2019), the learned baseline: a parity model of the hosted
//! model's architecture, trained so that its output on the sum of `K` queries is the sum of
//! the hosted model's `K` outputs (logits); a missing prediction is then rebuilt by
//! subtraction, `F(X_j) ~= F_P(P) - sum_{i != j} F(X_i)`. The recipe follows ParM's public
//! code (addition encoder, MSE, Adam with coupled weight decay, fresh random `K`-tuples each
//! epoch, 5000 training images held out, the epoch kept whose rebuilt predictions agree best
//! with the hosted model's on them).

use burn::module::Module;
use burn::nn::loss::{MseLoss, Reduction};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::data::{Dataset, Images};
use crate::models::{Architecture, CLASSES, Classifier};
use crate::train::image_tensor;

/// How a parity model is trained (ParM's settings by default).
#[derive(Clone, Debug)]
pub struct ParityConfig {
    /// Queries per parity group.
    pub k: usize,
    pub epochs: usize,
    /// `K`-tuples per step [default: 32, 64 at K = 2, as ParM].
    pub tuples_per_step: Option<usize>,
    pub learning_rate: f64,
    /// Added to the gradient (PyTorch's Adam), not decoupled.
    pub weight_decay: f64,
    /// Training images held out to choose the epoch kept.
    pub holdout: usize,
    pub seed: u64,
}

impl ParityConfig {
    /// ParM's settings for `k` queries per group over `epochs` epochs.
    pub fn new(k: usize, epochs: usize) -> Self {
        ParityConfig {
            k,
            epochs,
            tuples_per_step: None,
            learning_rate: 1e-3,
            weight_decay: 1e-5,
            holdout: 5000,
            seed: 7,
        }
    }

    fn tuples_per_step(&self) -> usize {
        self.tuples_per_step.unwrap_or(if self.k == 2 { 64 } else { 32 })
    }
}

/// Why a parity model could not be trained or used.
#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("K must be at least 2 (got {0}): a parity over one query is a replica")]
    K(usize),
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("{images} training images leave none to train on after holding out {holdout} and forming {k}-tuples")]
    TooFewImages { images: usize, holdout: usize, k: usize },
}

/// One epoch of parity training.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ParityEpoch {
    pub epoch: usize,
    pub mean_loss: f64,
    /// On the held-out images: how often the rebuilt prediction's class is the hosted model's.
    pub validation_agreement: f64,
    /// ... and the label.
    pub validation_accuracy: f64,
}

/// The hosted model's logits for every image, `[images, CLASSES]` row-major.
pub fn logits(model: &Classifier, images: &Images, dataset: Dataset, device: &Device, batch: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(images.len() * CLASSES);
    for start in (0..images.len()).step_by(batch.max(1)) {
        let end = (start + batch).min(images.len());
        let logits = model.forward(image_tensor(images, start..end, dataset, device));
        out.extend(logits.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default());
    }
    out
}

/// The parity queries of `tuples`: each the sum of its members' images (as the hosted model
/// takes them, normalised), `[tuples, 1, rows, cols]`.
fn parity_queries(images: &Images, normalised: &[f32], tuples: &[Vec<usize>], device: &Device) -> Tensor<4> {
    let len = images.image_len();
    let mut sums = vec![0.0f32; tuples.len() * len];
    for (sum, tuple) in sums.chunks_exact_mut(len).zip(tuples) {
        for &i in tuple {
            sum.iter_mut().zip(&normalised[i * len..(i + 1) * len]).for_each(|(s, v)| *s += v);
        }
    }
    Tensor::from_data(TensorData::new(sums, [tuples.len(), 1, images.rows, images.cols]), device)
}

/// Every image normalised for `dataset`, flat.
fn normalised(images: &Images, dataset: Dataset) -> Vec<f32> {
    let (mean, std) = crate::train::normalisation(dataset);
    images.pixels.iter().map(|&p| (f32::from(p) / 255.0 - mean) / std).collect()
}

/// Rebuilds member `j`'s logits of a group from the parity model's output and the other
/// members' logits: `parity - sum_{i != j} others_i`.
pub fn reconstruct(parity: &[f32], others: &[&[f32]]) -> Vec<f32> {
    let mut rebuilt = parity.to_vec();
    for other in others {
        rebuilt.iter_mut().zip(*other).for_each(|(r, o)| *r -= o);
    }
    rebuilt
}

/// The index of the largest value.
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// ParM's degraded-mode figures over groups: each member of each group erased in turn and
/// rebuilt from the parity output and the other members' true outputs.
#[derive(Clone, Debug, Default, PartialEq)]
struct Rebuilt {
    /// Rebuilt predictions whose class is the label.
    pub correct: usize,
    /// ... whose class is the hosted model's own.
    pub agreeing: usize,
    pub total: usize,
}

/// The parity model's outputs `[groups, CLASSES]` on the sums of `groups` of `images`.
pub fn parity_outputs(
    parity: &Classifier,
    images: &Images,
    dataset: Dataset,
    groups: &[Vec<usize>],
    device: &Device,
) -> Vec<f32> {
    parity_outputs_of(parity, images, &normalised(images, dataset), groups, device)
}

fn parity_outputs_of(
    parity: &Classifier,
    images: &Images,
    normalised: &[f32],
    groups: &[Vec<usize>],
    device: &Device,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(groups.len() * CLASSES);
    for batch in groups.chunks(256) {
        let outputs = parity.forward(parity_queries(images, normalised, batch, device));
        out.extend(outputs.into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default());
    }
    out
}

/// Runs `parity` on `groups` of `images` and rebuilds every member from it and the others'
/// `hosted` logits.
fn rebuild_groups(
    parity: &Classifier,
    images: &Images,
    normalised: &[f32],
    hosted: &[f32],
    groups: &[Vec<usize>],
    device: &Device,
) -> Rebuilt {
    let mut rebuilt = Rebuilt::default();
    let outputs = parity_outputs_of(parity, images, normalised, groups, device);
    for (group, output) in groups.iter().zip(outputs.chunks_exact(CLASSES)) {
        for (j, &member) in group.iter().enumerate() {
            let others: Vec<&[f32]> = group
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != j)
                .map(|(_, &i)| &hosted[i * CLASSES..(i + 1) * CLASSES])
                .collect();
            let class = argmax(&reconstruct(output, &others));
            rebuilt.correct += usize::from(class == usize::from(images.labels[member]));
            rebuilt.agreeing += usize::from(class == argmax(&hosted[member * CLASSES..(member + 1) * CLASSES]));
            rebuilt.total += 1;
        }
    }
    rebuilt
}

/// Random disjoint groups of `k` of `indices` (the remainder left out).
fn groups(indices: &[usize], k: usize, rng: &mut rand::rngs::StdRng) -> Vec<Vec<usize>> {
    let mut order = indices.to_vec();
    order.shuffle(rng);
    order.chunks_exact(k).map(<[usize]>::to_vec).collect()
}

/// Trains a parity model of `architecture` for `hosted` on `train` (its last `holdout`
/// images after a seeded shuffle held out); returns the epoch kept and every epoch's report.
/// `progress(done, total)` after every step, `epoch_done` after every epoch.
#[allow(clippy::too_many_arguments)]
pub fn train_parity(
    config: &ParityConfig,
    architecture: Architecture,
    dataset: Dataset,
    hosted: &Classifier,
    train: &Images,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
    mut epoch_done: impl FnMut(&ParityEpoch),
) -> Result<(Classifier, usize, Vec<ParityEpoch>), ParityError> {
    let k = config.k;
    if k < 2 {
        return Err(ParityError::K(k));
    }
    if config.epochs == 0 {
        return Err(ParityError::Zero { what: "epochs" });
    }
    if config.tuples_per_step() == 0 {
        return Err(ParityError::Zero { what: "tuples per step" });
    }
    let too_few = ParityError::TooFewImages { images: train.len(), holdout: config.holdout, k };
    if train.len() < config.holdout + k || config.holdout < k {
        return Err(too_few);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rng);
    let (training, held_out) = order.split_at(train.len() - config.holdout);
    // The hosted model's logits never change: computed once, the targets are their sums.
    let hosted_logits = logits(hosted, train, dataset, device, 500);
    let pixels = normalised(train, dataset);
    let validation = groups(held_out, k, &mut rng);

    device.seed(config.seed);
    let autodiff = device.clone().autodiff();
    let mut model = Classifier::init(architecture, &autodiff);
    let mut optimizer =
        AdamConfig::new().with_weight_decay(Some(WeightDecayConfig::new(config.weight_decay as f32))).init();
    let loss = MseLoss::new();
    let steps = (training.len() / k).div_ceil(config.tuples_per_step());
    let mut best: Option<(f64, usize, Classifier)> = None;
    let mut reports = Vec::new();
    for epoch in 1..=config.epochs {
        let tuples = groups(training, k, &mut rng);
        let mut loss_sum = 0.0;
        for (step, batch) in tuples.chunks(config.tuples_per_step()).enumerate() {
            let x = parity_queries(train, &pixels, batch, &autodiff);
            let mut target = vec![0.0f32; batch.len() * CLASSES];
            for (sum, tuple) in target.chunks_exact_mut(CLASSES).zip(batch) {
                for &i in tuple {
                    sum.iter_mut().zip(&hosted_logits[i * CLASSES..(i + 1) * CLASSES]).for_each(|(s, v)| *s += v);
                }
            }
            let y = Tensor::<2>::from_data(TensorData::new(target, [batch.len(), CLASSES]), &autodiff);
            let l = loss.forward(model.forward(x), y, Reduction::Mean);
            loss_sum += f64::from(l.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
            progress((epoch - 1) * steps + step + 1, config.epochs * steps);
        }
        let valid = model.valid();
        let rebuilt = rebuild_groups(&valid, train, &pixels, &hosted_logits, &validation, device);
        let total = rebuilt.total.max(1) as f64;
        let report = ParityEpoch {
            epoch,
            mean_loss: loss_sum / steps.max(1) as f64,
            validation_agreement: rebuilt.agreeing as f64 / total,
            validation_accuracy: rebuilt.correct as f64 / total,
        };
        epoch_done(&report);
        if best.as_ref().is_none_or(|(agreement, _, _)| report.validation_agreement > *agreement) {
            best = Some((report.validation_agreement, epoch, valid));
        }
        reports.push(report);
    }
    let (_, epoch, model) = best.expect("at least one epoch ran");
    Ok((model, epoch, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_member_is_the_parity_less_the_others() {
        let parity = [6.0, 1.0, -2.0];
        let (a, b) = ([1.0, 0.5, -1.0], [2.0, 0.0, 0.5]);
        assert_eq!(reconstruct(&parity, &[&a, &b]), vec![3.0, 0.5, -1.5]);
        assert_eq!(reconstruct(&parity, &[]), parity.to_vec());
    }

    #[test]
    fn groups_are_disjoint_and_whole() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let indices: Vec<usize> = (0..23).collect();
        let groups = groups(&indices, 4, &mut rng);
        assert_eq!(groups.len(), 5);
        let mut seen: Vec<usize> = groups.concat();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 20, "no index twice");
    }
}
