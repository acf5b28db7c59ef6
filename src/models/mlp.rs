//! A multilayer perceptron on the flattened image.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{Device, Tensor};

use super::{CLASSES, IMAGE_SIDE};

/// Hidden layer widths.
#[derive(Config, Debug)]
pub struct MlpConfig {
    #[config(default = "vec![256, 128]")]
    pub hidden: Vec<usize>,
}

/// Linear layers with ReLU between them.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
    relu: Relu,
}

impl MlpConfig {
    pub fn init(&self, device: &Device) -> Mlp {
        let widths: Vec<usize> =
            std::iter::once(IMAGE_SIDE * IMAGE_SIDE).chain(self.hidden.iter().copied()).chain([CLASSES]).collect();
        let layers = widths.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
        Mlp { layers, relu: Relu::new() }
    }
}

impl Mlp {
    /// Logits `[batch, 10]` for images `[batch, 1, 28, 28]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x: Tensor<2> = images.flatten(1, 3);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = self.relu.forward(x);
            }
        }
        x
    }
}
