//! Learning the calibrated locator ([`crate::kernels::locate::calibrated`]) offline: the hosted
//! model answers the coded queries of random groups of training images, honestly, and every
//! worker position's answers are fitted. The statistics live in the kernels crate; this module
//! only produces the honest traffic and reads and writes calibration files.

use std::path::Path;
use std::sync::Arc;

use burn::tensor::{Device, Tensor, activation};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};

use super::{EvalError, Outputs};
use crate::data::{Dataset, Images};
use crate::fused::{CodedRunner, FusedCode};
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
    let (k, n, stragglers) = (code.params().queries(), code.params().workers(), code.params().stragglers());
    if images.len() < k {
        return Err(EvalError::TooFewQueries { queries: images.len(), k, available: images.len() });
    }
    let runner = coded_runner(model, code, config.outputs, device)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut builder: Option<CalibrationBuilder> = None;
    let batch_groups = config.batch_groups.min(MAX_CODED_BATCH / n).max(1);
    let workers: Vec<usize> = (0..n).collect();
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
        let mut masks = vec![true; b * n];
        for mask in masks.chunks_exact_mut(n) {
            workers.choose_multiple(&mut rng, stragglers).for_each(|&w| mask[w] = false);
        }
        let builder = match &mut builder {
            Some(builder) => builder,
            None => builder.insert(CalibrationBuilder::new(code, row_len, usize::MAX)?),
        };
        builder.observe(&answers, &masks)?;
        done += b;
        progress(done, config.groups);
    }
    let builder = builder.ok_or(EvalError::Unsupported("calibration needs at least one group"))?;
    Ok(builder.fit(config.false_alarm)?)
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

/// Why a calibration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationFileError {
    #[error("reading calibration {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("calibration {path} is not one `approxifer calibrate` wrote: {source}")]
    Format { path: String, source: serde_json::Error },
    #[error("calibration {path} holds no calibration")]
    Empty { path: String },
}

/// What a calibration file holds: one code's calibration, or several (`approxifer calibrate
/// --partial`: a code's and those of the codes `serve` forms for its partial groups).
#[derive(Clone, Debug, PartialEq)]
pub struct Calibrations(Vec<Arc<Calibration>>);

impl Calibrations {
    /// The one learnt for `code`, else the first (whose use is then an error that says what
    /// differs: [`Calibration::check`]).
    pub fn for_code(&self, code: &Code) -> Arc<Calibration> {
        self.0.iter().find(|c| c.describes(code)).unwrap_or(&self.0[0]).clone()
    }

    /// The one for codes of `k` queries, if the file has one.
    pub fn with_queries(&self, k: usize) -> Option<Arc<Calibration>> {
        self.0.iter().find(|c| c.queries == k).cloned()
    }

    /// Every calibration but those for codes of `k` queries.
    pub fn without_queries(&self, k: usize) -> Vec<Arc<Calibration>> {
        self.0.iter().filter(|c| c.queries != k).cloned().collect()
    }

    /// The codes' `K`, as the file lists them.
    pub fn queries(&self) -> Vec<usize> {
        self.0.iter().map(|c| c.queries).collect()
    }
}

/// The key under which a file of several calibrations lists them.
const SEVERAL: &str = "calibrations";

/// Reads a calibration file written by [`write`].
pub fn read(path: &Path) -> Result<Calibrations, CalibrationFileError> {
    let name = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CalibrationFileError::Io { path: name(), source })?;
    let format = |source| CalibrationFileError::Format { path: name(), source };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(format)?;
    let calibrations: Vec<Calibration> = match value.get(SEVERAL) {
        Some(several) => serde_json::from_value(several.clone()).map_err(format)?,
        None => vec![serde_json::from_value(value).map_err(format)?],
    };
    if calibrations.is_empty() {
        return Err(CalibrationFileError::Empty { path: name() });
    }
    Ok(Calibrations(calibrations.into_iter().map(Arc::new).collect()))
}

/// Writes `calibrations` as JSON: one as itself (as files have always been), several under
/// `"calibrations"`.
pub fn write(path: &Path, calibrations: &[Calibration]) -> Result<(), CalibrationFileError> {
    let io = |source| CalibrationFileError::Io { path: path.display().to_string(), source };
    let text = match calibrations {
        [one] => serde_json::to_string(one),
        several => serde_json::to_string(&serde_json::json!({ SEVERAL: several })),
    }
    .map_err(|e| io(std::io::Error::other(e)))?;
    std::fs::write(path, text).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::CodeParams;

    /// Whether `read` is `written` as a file gives it back: serde_json reads a float back to
    /// within its last bit (exactly only with its `float_roundtrip` feature, which Burn's
    /// crates would all be rebuilt for).
    fn same(read: &Calibration, written: &Calibration) -> bool {
        let shape = |c: &Calibration| (c.queries, c.workers, c.row_len, c.groups, c.summary().len());
        let close = read
            .summary()
            .iter()
            .zip(written.summary())
            .all(|(a, b)| a.samples == b.samples && (a.threshold - b.threshold).abs() <= 1e-12 * b.threshold.abs());
        shape(read) == shape(written) && close
    }

    /// A calibration of `code` from honest answers of a smooth model (3 outputs).
    fn calibration(code: &Code) -> Calibration {
        let n = code.params().workers();
        let value = |i: usize| (i / 3 % n) as f32 * 0.3 + (i % 3) as f32 + (i / (3 * n) * 7919 % 101) as f32 * 0.01;
        let answers: Vec<f32> = (0..200 * n * 3).map(|i| value(i).sin()).collect();
        let mut builder = CalibrationBuilder::new(code, 3, usize::MAX).unwrap();
        builder.observe(&answers, &vec![true; 200 * n]).unwrap();
        builder.fit(0.01).unwrap()
    }

    #[test]
    fn one_calibration_is_written_as_itself_and_several_under_their_key_each_found_by_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let full = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let partial = full.for_queries(2).unwrap();
        let (one, other) = (calibration(&full), calibration(&partial));

        let path = dir.path().join("one.json");
        write(&path, std::slice::from_ref(&one)).unwrap();
        let text: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(text["queries"], 3, "a file of one calibration is that calibration, as files always were");
        assert!(same(&read(&path).unwrap().for_code(&full), &one));

        let path = dir.path().join("several.json");
        write(&path, &[one.clone(), other.clone()]).unwrap();
        let read = read(&path).unwrap();
        assert!(same(&read.for_code(&full), &one) && same(&read.for_code(&partial), &other));
        assert_eq!(read.queries(), [3, 2]);
        assert!(same(&read.with_queries(3).unwrap(), &one));
        assert_eq!(read.without_queries(3).len(), 1);
        // A code the file has none for gets the first, whose check says what differs.
        let unknown = Code::new(CodeParams::builder(3, 8).byzantine(1).build().unwrap()).unwrap();
        assert!(read.for_code(&unknown).check(&unknown, 3).is_err());
    }

    #[test]
    fn an_empty_list_or_a_broken_entry_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.json");
        let error = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read(&path).unwrap_err().to_string()
        };
        assert!(error(r#"{"calibrations": []}"#).contains("holds no calibration"));
        assert!(error(r#"{"calibrations": [{"queries": 2}]}"#).contains("is not one `approxifer calibrate` wrote"));
        assert!(error(r#"{"queries": 2}"#).contains("is not one `approxifer calibrate` wrote"));
        assert!(error("[").contains(&path.display().to_string()));
    }
}
