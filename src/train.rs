//! Training zoo models on MNIST or Fashion-MNIST with Burn (Adam, cross-entropy), reporting
//! test accuracy after every epoch.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::data::{Dataset, Images};
use crate::models::{Architecture, Classifier};

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub architecture: Architecture,
    pub dataset: Dataset,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

impl TrainConfig {
    /// Whether this configuration can train at all.
    pub fn check(&self) -> Result<(), TrainError> {
        if self.architecture == Architecture::DigitCnn {
            return Err(TrainError::NotTrainable("digit-cnn"));
        }
        if self.epochs == 0 {
            return Err(TrainError::Zero { what: "epochs" });
        }
        if self.batch_size == 0 {
            return Err(TrainError::Zero { what: "batch size" });
        }
        Ok(())
    }
}

/// One epoch's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub mean_loss: f64,
    pub test_accuracy: f64,
}

/// Why training could not start.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0} cannot be trained here; it is loaded from its pretrained weights")]
    NotTrainable(&'static str),
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("the training set is empty")]
    NoData,
}

/// The per-dataset normalisation `(x / 255 - mean) / std` every zoo model is trained with.
pub fn normalisation(dataset: Dataset) -> (f32, f32) {
    match dataset {
        Dataset::Mnist => (0.1307, 0.3081),
        Dataset::FashionMnist => (0.2860, 0.3530),
    }
}

/// Images `[count, 1, rows, cols]`, normalised for `dataset`, on `device`.
pub fn image_tensor(images: &Images, range: std::ops::Range<usize>, dataset: Dataset, device: &Device) -> Tensor<4> {
    let (count, rows, cols) = (range.len(), images.rows, images.cols);
    Tensor::from_data(TensorData::new(normalised(images, range, dataset), [count, 1, rows, cols]), device)
}

/// The pixels of images `range`, normalised for `dataset`, row-major on the host.
pub fn normalised(images: &Images, range: std::ops::Range<usize>, dataset: Dataset) -> Vec<f32> {
    let (mean, std) = normalisation(dataset);
    let len = images.image_len();
    images.pixels[range.start * len..range.end * len].iter().map(|&p| (f32::from(p) / 255.0 - mean) / std).collect()
}

/// Trains a fresh `config.architecture` on `train`, evaluating on `test` after each epoch;
/// `progress(done, total)` is called after every batch, `epoch_done` after every epoch.
pub fn train(
    config: &TrainConfig,
    train: &Images,
    test: &Images,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
    mut epoch_done: impl FnMut(&EpochReport),
) -> Result<(Classifier, Vec<EpochReport>), TrainError> {
    config.check()?;
    if train.is_empty() {
        return Err(TrainError::NoData);
    }
    device.seed(config.seed);
    let autodiff = device.clone().autodiff();
    let mut model = Classifier::init(config.architecture, &autodiff);
    let mut optimizer = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&autodiff);
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let batches = train.len().div_ceil(config.batch_size);
    let mut reports = Vec::new();
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for (b, batch) in order.chunks(config.batch_size).enumerate() {
            let images = train.gather(batch);
            let x = image_tensor(&images, 0..batch.len(), config.dataset, &autodiff);
            let labels: Vec<i64> = images.labels.iter().map(|&l| i64::from(l)).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch.len()]), &autodiff);
            let loss = loss_fn.forward(model.forward(x), y);
            loss_sum += f64::from(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
            progress((epoch - 1) * batches + b + 1, config.epochs * batches);
        }
        let report = EpochReport {
            epoch,
            mean_loss: loss_sum / batches as f64,
            test_accuracy: accuracy(&model.valid(), test, config.dataset, device, 500),
        };
        epoch_done(&report);
        reports.push(report);
    }
    Ok((model.valid(), reports))
}

/// Predicted classes for every image, in batches of `batch`.
pub fn predict(model: &Classifier, images: &Images, dataset: Dataset, device: &Device, batch: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(images.len());
    for start in (0..images.len()).step_by(batch.max(1)) {
        let end = (start + batch).min(images.len());
        let logits = model.forward(image_tensor(images, start..end, dataset, device));
        out.extend(argmax_rows(logits));
    }
    out
}

/// The index of the largest value in each row.
pub fn argmax_rows(logits: Tensor<2>) -> Vec<usize> {
    let classes = logits.dims()[1];
    let values = logits.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 logits");
    values
        .chunks_exact(classes)
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }))
        .collect()
}

/// The fraction of `images` `model` classifies correctly.
pub fn accuracy(model: &Classifier, images: &Images, dataset: Dataset, device: &Device, batch: usize) -> f64 {
    if images.is_empty() {
        return 0.0;
    }
    let predicted = predict(model, images, dataset, device, batch);
    let correct = predicted.iter().zip(&images.labels).filter(|(p, l)| **p == usize::from(**l)).count();
    correct as f64 / images.len() as f64
}
