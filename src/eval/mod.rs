//! Accuracy of coded inference, by the paper's protocol (ALGORITHM.md, "Degraded-mode
//! accuracy"): groups of `K` random test inputs, `N = K + S` workers, `S` random stragglers
//! per group, every prediction decoded on the device by the fused pipeline.
//!
//! Per setting it reports, on the same inputs:
//! - `base_accuracy`: the model on the raw queries;
//! - `normal_accuracy`: decoded from all `N` workers (no stragglers);
//! - `degraded_accuracy_paper`: all `K` predictions decoded from the `N - S` responders;
//! - `degraded_accuracy_reconstructed`: ParM's figure, only the predictions that were not
//!   available directly, i.e. whose query no responding worker held unmixed (in the
//!   non-systematic layout that is every prediction, unless a worker node coincides with a
//!   data node). `None` when no prediction had to be reconstructed.

mod byzantine;
pub mod calibrate;
mod parm;
mod privacy;

pub use byzantine::{ByzantineConfig, ByzantineRow, CalibrationSource, evaluate_byzantine};
pub use calibrate::{CalibrateConfig, calibrate};
pub use parm::evaluate_parm;
pub use privacy::{AttackerConfig, PrivacyConfig, PrivacyRow, evaluate_privacy};

use burn::tensor::{Device, Tensor, TensorData, activation};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::data::{Dataset, Images};
use crate::fused::{CodedRunner, FusedCode, FusedError};
use crate::kernels::privacy::MaskSampler;
use crate::kernels::{Code, CodeParams, Layout, NodeFamily};
use crate::models::Classifier;
use crate::train::{argmax_rows, image_tensor};

/// What the workers return and the decoder interpolates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outputs {
    /// Class probabilities (the model followed by softmax): bounded, so one bad
    /// interpolation cannot dominate the argmax.
    #[default]
    Softmax,
    /// The model's raw logits.
    Logits,
}

/// One setting of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub k: usize,
    pub stragglers: usize,
    pub layout: Layout,
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub dataset: Dataset,
    pub model: String,
    pub settings: Vec<Setting>,
    /// Queries per setting (rounded down to whole groups; at most the test set).
    pub queries: usize,
    /// Groups per device batch.
    pub batch_groups: usize,
    pub outputs: Outputs,
    /// Worker nodes; `None` for [`default_nodes`].
    pub nodes: Option<NodeFamily>,
    pub seed: u64,
}

/// One setting's result; the JSON keys of `approxifer eval --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalRow {
    /// `approxifer`, or `parm` (ParM's parity model, [`evaluate_parm`]).
    pub scheme: String,
    pub dataset: String,
    pub model: String,
    pub k: usize,
    pub n: usize,
    pub stragglers: usize,
    pub layout: String,
    pub nodes: String,
    pub outputs: Outputs,
    pub base_accuracy: f64,
    pub normal_accuracy: f64,
    pub degraded_accuracy_paper: f64,
    pub degraded_accuracy_reconstructed: Option<f64>,
    /// Predictions counted in `degraded_accuracy_reconstructed`.
    pub reconstructed: usize,
    pub queries: usize,
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Codec(#[from] crate::kernels::Error),
    #[error(transparent)]
    Fused(#[from] FusedError),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error("reading the model's answers back from the device: {0}")]
    Data(String),
    #[error("no --n value reaches 2K + 2A + S - 1 = {least} for K = {k}, A = {byzantine}")]
    NoWorkerCount { least: usize, k: usize, byzantine: usize },
    #[error("{queries} queries make no group of K = {k} (the test set has {available} images)")]
    TooFewQueries { queries: usize, k: usize, available: usize },
}

/// Counts of correct predictions.
#[derive(Default)]
struct Tally {
    base: usize,
    normal: usize,
    degraded: usize,
    reconstructed_correct: usize,
    reconstructed: usize,
    queries: usize,
}

/// Evaluates `model` on `test` for every setting; `progress(done, total)` counts groups.
pub fn evaluate(
    model: &Classifier,
    test: &Images,
    config: &EvalConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<EvalRow>, EvalError> {
    let queries = config.queries.min(test.len());
    let total_groups: usize = config.settings.iter().map(|s| queries / s.k).sum();
    let mut done = 0;
    let mut rows = Vec::with_capacity(config.settings.len());
    for setting in &config.settings {
        let n = setting.k + setting.stragglers;
        let mut params = CodeParams::builder(setting.k, n).stragglers(setting.stragglers).layout(setting.layout);
        params = params.nodes(config.nodes.unwrap_or(default_nodes(setting.layout)));
        let code = Code::new(params.build()?)?;
        rows.push(evaluate_code(model, test, config, code, None, device, &mut |groups| {
            done += groups;
            progress(done, total_groups);
        })?);
    }
    Ok(rows)
}

/// One setting of [`evaluate`]: `code` on `config`'s queries (the same for every code, by
/// `config.seed`) with `S` random stragglers per group (the same for codes of one `N`), masks
/// for a private code drawn from `masks`; `batch_done(groups)` after every device batch.
fn evaluate_code(
    model: &Classifier,
    test: &Images,
    config: &EvalConfig,
    code: Code,
    mut masks: Option<&mut MaskSampler>,
    device: &Device,
    batch_done: &mut dyn FnMut(usize),
) -> Result<EvalRow, EvalError> {
    let queries = config.queries.min(test.len());
    let p = *code.params();
    let (k, n, stragglers, t) = (p.queries(), p.workers(), p.stragglers(), p.privacy());
    let groups = queries / k;
    if groups == 0 {
        return Err(EvalError::TooFewQueries { queries, k, available: test.len() });
    }
    if t > 0 && masks.is_none() {
        return Err(EvalError::Codec(crate::kernels::Error::MasksMismatch {
            privacy: t,
            what: "evaluate it with masks",
        }));
    }
    let direct = code.direct_workers();
    let outputs = config.outputs;
    let hosted = |x: Tensor<4>| match outputs {
        Outputs::Softmax => activation::softmax(model.forward(x), 1),
        Outputs::Logits => model.forward(x),
    };
    let runner = CodedRunner::new(hosted, FusedCode::new(code)?, device.clone())?;
    // The same queries for every setting (one seed), fresh stragglers per setting.
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let order = query_order(test, config, k, &mut rng);
    let mut tally = Tally::default();
    for batch in order.chunks(config.batch_groups.max(1) * k) {
        let b = batch.len() / k;
        let images = test.gather(batch);
        let x = image_tensor(&images, 0..batch.len(), config.dataset, device);
        let base = argmax_rows(model.forward(x.clone()));
        let group_masks = match masks.as_deref_mut().filter(|_| t > 0) {
            Some(sampler) => {
                let [_, channels, rows, cols] = x.dims();
                let drawn = sampler.masks(runner.code().code(), b, channels * rows * cols);
                Some(Tensor::from_data(TensorData::new(drawn, [b * t, channels, rows, cols]), device))
            }
            None => None,
        };
        let predictions = runner.forward(runner.encode_masked(x, group_masks)?);
        let all = vec![true; b * n];
        let normal = argmax_rows(runner.decode(predictions.clone(), &all)?);
        let responders = straggler_masks(b, n, stragglers, &mut rng);
        let degraded = argmax_rows(runner.decode(predictions, &responders)?);
        for (q, &label) in images.labels.iter().enumerate() {
            let label = usize::from(label);
            let (group, j) = (q / k, q % k);
            tally.base += usize::from(base[q] == label);
            tally.normal += usize::from(normal[q] == label);
            tally.degraded += usize::from(degraded[q] == label);
            let available = direct[j].iter().any(|&w| responders[group * n + w]);
            if !available {
                tally.reconstructed += 1;
                tally.reconstructed_correct += usize::from(degraded[q] == label);
            }
        }
        tally.queries += batch.len();
        batch_done(b);
    }
    let rate = |correct: usize| correct as f64 / tally.queries as f64;
    Ok(EvalRow {
        scheme: "approxifer".into(),
        dataset: config.dataset.name().into(),
        model: config.model.clone(),
        k,
        n,
        stragglers,
        layout: p.layout().name().into(),
        nodes: p.nodes().name().into(),
        outputs: config.outputs,
        base_accuracy: rate(tally.base),
        normal_accuracy: rate(tally.normal),
        degraded_accuracy_paper: rate(tally.degraded),
        degraded_accuracy_reconstructed: (tally.reconstructed > 0)
            .then(|| tally.reconstructed_correct as f64 / tally.reconstructed as f64),
        reconstructed: tally.reconstructed,
        queries: tally.queries,
    })
}

/// The test images an evaluation asks about, in whole groups of `k`: `config.queries` of them
/// (at most the test set) in an order drawn from `rng`, seeded with `config.seed`.
fn query_order(test: &Images, config: &EvalConfig, k: usize, rng: &mut rand::rngs::StdRng) -> Vec<usize> {
    let queries = config.queries.min(test.len());
    let mut order: Vec<usize> = (0..test.len()).collect();
    order.shuffle(rng);
    order.truncate(queries / k * k);
    order
}

/// The worker nodes evaluation uses unless told otherwise: the authors' `cos(n pi / N)` for the
/// non-systematic layout, which measured best with `N = K + S` (Fashion-MNIST, LeNet-5, K = 8,
/// S = 1, 800 queries: degraded accuracy 0.78 against 0.71 with first-kind and 0.56 with
/// second-kind points, the codec's default), and the layout's own default otherwise.
pub fn default_nodes(layout: Layout) -> NodeFamily {
    match layout {
        Layout::NonSystematic => NodeFamily::Authors,
        Layout::Systematic => layout.default_nodes(),
    }
}

/// `groups x n` masks with `stragglers` distinct workers missing from each group.
fn straggler_masks(groups: usize, n: usize, stragglers: usize, rng: &mut impl rand::Rng) -> Vec<bool> {
    let workers: Vec<usize> = (0..n).collect();
    let mut masks = vec![true; groups * n];
    for group in masks.chunks_exact_mut(n) {
        for &w in workers.choose_multiple(rng, stragglers) {
            group[w] = false;
        }
    }
    masks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straggler_masks_drop_exactly_s_distinct_workers_per_group() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let masks = straggler_masks(50, 7, 3, &mut rng);
        for group in masks.chunks_exact(7) {
            assert_eq!(group.iter().filter(|&&m| !m).count(), 3);
        }
    }

    #[test]
    fn direct_workers_are_the_systematic_workers_or_coincident_nodes() {
        let sys =
            Code::new(CodeParams::builder(4, 6).stragglers(2).layout(Layout::Systematic).build().unwrap()).unwrap();
        let expected: Vec<Vec<usize>> =
            sys.nodes().systematic_workers.as_ref().unwrap().iter().map(|&w| vec![w]).collect();
        assert_eq!(sys.direct_workers(), expected);
        let plain = Code::new(CodeParams::builder(4, 6).stragglers(2).build().unwrap()).unwrap();
        assert!(plain.direct_workers().iter().all(Vec::is_empty));
        // K = 3, N = 5: the middle second-kind node is the middle data node.
        let coincident = Code::new(CodeParams::builder(3, 5).stragglers(2).build().unwrap()).unwrap();
        assert_eq!(coincident.direct_workers()[1], vec![2]);
    }
}
