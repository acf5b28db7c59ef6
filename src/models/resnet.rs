//! A compact residual network for 28 x 28 inputs (He et al. 2016, the CIFAR variant scaled
//! down): a 3x3 stem, three stages of basic blocks, global average pooling, one linear layer.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};

use super::CLASSES;

/// Channels per stage (each stage after the first halves the resolution) and blocks per stage.
#[derive(Config, Debug)]
pub struct ResNetConfig {
    #[config(default = "vec![16, 32, 64]")]
    pub channels: Vec<usize>,
    #[config(default = 1)]
    pub blocks_per_stage: usize,
}

/// Two 3x3 convolutions with batch norm, and a 1x1 projection when the shape changes.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    projection: Option<(Conv2d, BatchNorm)>,
    relu: Relu,
}

#[derive(Module, Debug)]
pub struct ResNet {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    pool: AdaptiveAvgPool2d,
    head: Linear,
    relu: Relu,
}

fn conv3x3(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

impl BasicBlock {
    fn new(c_in: usize, c_out: usize, stride: usize, device: &Device) -> Self {
        let projection = (stride != 1 || c_in != c_out).then(|| {
            let conv = Conv2dConfig::new([c_in, c_out], [1, 1]).with_stride([stride, stride]).with_bias(false);
            (conv.init(device), BatchNormConfig::new(c_out).init(device))
        });
        BasicBlock {
            conv1: conv3x3(c_in, c_out, stride, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv3x3(c_out, c_out, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            projection,
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = match &self.projection {
            Some((conv, bn)) => bn.forward(conv.forward(x.clone())),
            None => x.clone(),
        };
        let y = self.relu.forward(self.bn1.forward(self.conv1.forward(x)));
        let y = self.bn2.forward(self.conv2.forward(y));
        self.relu.forward(y + shortcut)
    }
}

impl ResNetConfig {
    pub fn init(&self, device: &Device) -> ResNet {
        let first = self.channels[0];
        let mut blocks = Vec::new();
        let mut c_in = first;
        for (stage, &c_out) in self.channels.iter().enumerate() {
            for block in 0..self.blocks_per_stage {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(c_in, c_out, stride, device));
                c_in = c_out;
            }
        }
        ResNet {
            stem: conv3x3(1, first, 1, device),
            stem_bn: BatchNormConfig::new(first).init(device),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(c_in, CLASSES).init(device),
            relu: Relu::new(),
        }
    }
}

impl ResNet {
    /// Logits `[batch, 10]` for images `[batch, 1, 28, 28]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self.relu.forward(self.stem_bn.forward(self.stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let x: Tensor<2> = self.pool.forward(x).flatten(1, 3);
        self.head.forward(x)
    }
}
