//! Learning the calibrated locator ([`crate::kernels::locate::calibrated`]) offline: the hosted
//! model answers the coded queries of random groups of training images, honestly, and every
//! worker position's answers are fitted. The statistics live in the kernels crate; this module
//! only produces the honest traffic (files: [`crate::calibration_file`]).

use burn::tensor::{Device, Tensor, activation};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::{EvalError, Outputs};
use crate::data::{Dataset, Images};
use crate::fused::{CodedRunner, FusedCode};
use crate::kernels::cpu::Element;
use crate::kernels::{Calibration, CalibrationBuilder, Code};
use crate::models::Classifier;
use crate::train::image_tensor;

/// The most coded queries one forward pass takes (a lavapipe storage binding holds 128 MiB).
pub(super) const MAX_CODED_BATCH: usize = 960;

/// How to calibrate.
#[derive(Clone, Debug)]
pub struct CalibrateConfig {
    pub dataset: Dataset,
    /// Honest groups to learn from (random groups of `K` images).
    pub groups: usize,
    pub outputs: Outputs,
    /// The probability that an honest answer is flagged.
    pub false_alarm: f64,
    /// Groups per device batch.
    pub batch_groups: usize,
    pub seed: u64,
}

/// Learns `code`'s calibration for `model` from `images` (the training set: never the
/// queries it will be measured on). Each group drops the code's `S` random stragglers, as
/// serving does; `progress(done, total)` counts groups.
pub fn calibrate(
    model: &Classifier,
    images: &Images,
    code: &Code,
    config: &CalibrateConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Calibration, EvalError> {
    let (k, n) = (code.params().queries(), code.params().workers());
    if images.len() < k {
        return Err(EvalError::TooFewQueries { queries: images.len(), k, available: images.len() });
    }
    let runner = coded_runner(model, code, config.outputs, device)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut builder: Option<CalibrationBuilder> = None;
    let batch_groups = config.batch_groups.min(MAX_CODED_BATCH / n).max(1);
    let mut done = 0;
    while done < config.groups {
        let b = batch_groups.min(config.groups - done);
        // Random groups of distinct images; a new draw per batch so any number of groups fits.
        let mut order: Vec<usize> = (0..images.len()).collect();
        order.shuffle(&mut rng);
        order.truncate((b * k).min(images.len() / k * k));
        let b = order.len() / k;
        let batch = images.gather(&order);
        let x = image_tensor(&batch, 0..order.len(), config.dataset, device);
        let (answers, row_len) = coded_answers(&runner, x)?;
        let builder = match &mut builder {
            Some(builder) => builder,
            None => builder.insert(CalibrationBuilder::new(code, row_len, usize::MAX)?),
        };
        observe_with_stragglers(builder, code, (&answers, row_len), &mut rng)?;
        done += b;
        progress(done, config.groups);
    }
    let builder = builder.ok_or(EvalError::Unsupported("calibration needs at least one group"))?;
    Ok(builder.fit(config.false_alarm)?)
}

/// Learns `code`'s calibration from honest answers computed anywhere: `answers` is `[G, N,
/// row_len]`, every worker's answer to the coded queries `approxifer encode` made of `G`
/// groups of training queries (the layout `decode` reads). This is how a model outside the
/// zoo, run by another engine, is calibrated. As in [`calibrate`], each group drops the
/// code's `S` stragglers at random (drawn from `seed`); rows with a NaN or an infinity are
/// skipped, and a liar or two in the traffic are left out of the fit as outliers.
pub fn calibrate_from_answers<T: Element>(
    code: &Code,
    answers: &[T],
    row_len: usize,
    false_alarm: f64,
    seed: u64,
) -> Result<Calibration, EvalError> {
    let mut builder = CalibrationBuilder::new(code, row_len, usize::MAX)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    observe_with_stragglers(&mut builder, code, (answers, row_len), &mut rng)?;
    Ok(builder.fit(false_alarm)?)
}

/// Adds the groups of `answers` (`[B, N, row_len]`) to `builder`, each with the code's `S`
/// stragglers drawn at random, as serving misses them.
fn observe_with_stragglers<T: Element>(
    builder: &mut CalibrationBuilder,
    code: &Code,
    (answers, row_len): (&[T], usize),
    rng: &mut impl rand::Rng,
) -> Result<(), EvalError> {
    let (n, stragglers) = (code.params().workers(), code.params().stragglers());
    // A length that is not whole groups is the builder's error to report.
    let groups = answers.len() / (n * row_len).max(1);
    Ok(builder.observe(answers, &super::straggler_masks(groups, n, stragglers, rng))?)
}

/// The model as the workers run it (`outputs` says whether softmax follows), behind `code`.
pub(super) fn coded_runner<'a>(
    model: &'a Classifier,
    code: &Code,
    outputs: Outputs,
    device: &Device,
) -> Result<CodedRunner<impl Fn(Tensor<4>) -> Tensor<2> + 'a, 4>, EvalError> {
    let hosted = move |x: Tensor<4>| match outputs {
        Outputs::Softmax => activation::softmax(model.forward(x), 1),
        Outputs::Logits => model.forward(x),
    };
    Ok(CodedRunner::new(hosted, FusedCode::new(code.clone())?, device.clone())?)
}

/// Every worker's honest answer to the coded queries of `x` (`[B*K, ...]` raw queries):
/// `[B, N, C]` on the host, and `C`.
pub(super) fn coded_answers(
    runner: &CodedRunner<impl Fn(Tensor<4>) -> Tensor<2>, 4>,
    x: Tensor<4>,
) -> Result<(Vec<f32>, usize), EvalError> {
    let answers = runner.forward(runner.encode(x)?);
    let row_len = answers.dims()[1];
    let answers = answers
        .try_into_data()
        .map_err(|e| EvalError::Data(format!("{e:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| EvalError::Data(format!("{e:?}")))?;
    Ok((answers, row_len))
}
