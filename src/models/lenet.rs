//! LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, the classic small CNN.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use super::CLASSES;

/// conv 5x5 (6) - pool - conv 5x5 (16) - pool - 120 - 84 - 10.
#[derive(Module, Debug)]
pub struct LeNet5 {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
    relu: Relu,
}

impl LeNet5 {
    pub fn init(device: &Device) -> Self {
        Self::with_channels(1, device)
    }

    /// LeNet-5 on images of `channels` planes (`[batch, channels, 28, 28]`): e.g. the coded
    /// queries of several colluding workers, for the privacy evaluation's attacker.
    pub fn with_channels(channels: usize, device: &Device) -> Self {
        LeNet5 {
            // Padding 2 keeps 28 x 28, as the original's 32 x 32 inputs had a border.
            conv1: Conv2dConfig::new([channels, 6], [5, 5])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .init(device),
            conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc1: LinearConfig::new(16 * 5 * 5, 120).init(device),
            fc2: LinearConfig::new(120, 84).init(device),
            fc3: LinearConfig::new(84, CLASSES).init(device),
            relu: Relu::new(),
        }
    }

    /// Logits `[batch, 10]` for images `[batch, channels, 28, 28]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.relu.forward(self.conv1.forward(images))); // 6 x 14 x 14
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x))); // 16 x 5 x 5
        let x: Tensor<2> = x.flatten(1, 3);
        let x = self.relu.forward(self.fc1.forward(x));
        let x = self.relu.forward(self.fc2.forward(x));
        self.fc3.forward(x)
    }
}
