//! The hosted model's options, shared by `serve`, `worker` and `export-weights`: the embedded
//! LeNet-5 unless a zoo architecture and its weights are named.

use std::path::PathBuf;

use burn::tensor::Device;
use clap::Args;

use crate::data::Dataset;
use crate::models::{self, Architecture, Classifier};

#[derive(Debug, Args)]
pub(super) struct ModelArgs {
    /// The hosted model's architecture [default: the embedded LeNet-5 trained on
    /// Fashion-MNIST]
    #[arg(long = "model", value_enum, value_name = "ARCH", requires = "weights")]
    pub architecture: Option<Architecture>,
    /// Its weights: what `approxifer train` writes, or the PyTorch file for digit-cnn
    /// (scripts/fetch-data.sh fetches it to DATA/models/digit_recognizer.pth)
    #[arg(long, value_name = "FILE", requires = "architecture")]
    pub weights: Option<PathBuf>,
}

impl ModelArgs {
    /// What clients call the model when `--model-name` is not given: the embedded model's
    /// name, else the architecture's.
    pub fn default_name(&self) -> String {
        match self.architecture {
            Some(architecture) => architecture.name().into(),
            None => crate::embedded::NAME.into(),
        }
    }

    /// The hosted model's architecture.
    pub fn architecture(&self) -> Architecture {
        self.architecture.unwrap_or(crate::embedded::ARCHITECTURE)
    }

    /// The model on `device`.
    pub fn load(&self, device: &Device) -> anyhow::Result<Classifier> {
        Ok(match (self.architecture, &self.weights) {
            (Some(architecture), Some(path)) => models::load(architecture, path, device)?,
            _ => crate::embedded::model(device)?,
        })
    }

    /// One query's shape: every zoo model takes one 28 x 28 greyscale image.
    pub fn query_shape(&self) -> [usize; 3] {
        [1, models::IMAGE_SIDE, models::IMAGE_SIDE]
    }
}

/// The hosted model `eval` and `train-parity` use for `dataset`: `architecture` (by default the
/// dataset's own: the digit CNN for MNIST, LeNet-5 for Fashion-MNIST) with `weights`, or else
/// the digit CNN from the data directory or the embedded model.
pub(super) fn hosted_for(
    dataset: Dataset,
    architecture: Option<Architecture>,
    weights: Option<&std::path::Path>,
    data_dir: &std::path::Path,
    device: &Device,
) -> anyhow::Result<(Architecture, Classifier)> {
    let architecture = architecture.unwrap_or(match dataset {
        Dataset::Mnist => Architecture::DigitCnn,
        Dataset::FashionMnist => Architecture::Lenet5,
    });
    let model = match weights {
        Some(path) => models::load(architecture, path, device)?,
        None if architecture == Architecture::DigitCnn => {
            anyhow::ensure!(dataset == Dataset::Mnist, "the digit CNN is an MNIST model; pass --dataset mnist");
            models::load(architecture, &data_dir.join("models/digit_recognizer.pth"), device)?
        }
        None => crate::embedded::model_for(architecture, dataset, device)?.ok_or_else(|| {
            anyhow::anyhow!(
                "no weights for {} on {}: pass --weights FILE (approxifer train writes one)",
                architecture.name(),
                dataset.name()
            )
        })?,
    };
    Ok((architecture, model))
}
