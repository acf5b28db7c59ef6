//! The embedded default, so the main command runs with no download: a LeNet-5 trained by
//! `approxifer train` on Fashion-MNIST (`src/embedded/lenet5-fashion-mnist.bpk`, Burn's
//! format) and the first 1000 Fashion-MNIST test images (written by
//! `scripts/make-embedded-sample.py`; Fashion-MNIST is MIT-licensed).

use std::io::Read;

use burn::tensor::Device;

use crate::data::idx::{self, IdxArray};
use crate::data::{Dataset, Images};
use crate::models::{self, Architecture, Classifier, ModelError};

/// The embedded model's architecture and training set.
pub const ARCHITECTURE: Architecture = Architecture::Lenet5;
pub const DATASET: Dataset = Dataset::FashionMnist;
/// What `serve` and `worker` call it by default.
pub const NAME: &str = "lenet5-fashion-mnist";

/// Burnpack aligns tensor data to 256 bytes within the file so that it can be read in place;
/// `include_bytes!` alone guarantees 1, which Burn's CPU backend rejects (a panic on its first
/// convolution). This wrapper gives the embedded file the alignment the format assumes.
#[repr(C, align(256))]
struct Aligned<T: ?Sized>(T);

static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("embedded/lenet5-fashion-mnist.bpk"));
static IMAGES: &[u8] = include_bytes!("embedded/fashion-mnist-test-images.idx.gz");
static LABELS: &[u8] = include_bytes!("embedded/fashion-mnist-test-labels.idx.gz");

/// The embedded model on `device`.
pub fn model(device: &Device) -> Result<Classifier, ModelError> {
    models::load_burnpack_bytes(Classifier::init(ARCHITECTURE, device), &MODEL.0)
}

/// The embedded model if it is `architecture` trained on `dataset`.
pub fn model_for(
    architecture: Architecture,
    dataset: Dataset,
    device: &Device,
) -> Result<Option<Classifier>, ModelError> {
    if (architecture, dataset) != (ARCHITECTURE, DATASET) {
        return Ok(None);
    }
    model(device).map(Some)
}

/// One entry of [`PARITY`]: a shipped parity model, aligned as [`MODEL`] is.
macro_rules! parity {
    ($architecture:ident, $dataset:ident, $k:literal, $file:literal) => {
        (
            Architecture::$architecture,
            Dataset::$dataset,
            $k,
            &Aligned(*include_bytes!(concat!("embedded/parity/", $file))),
        )
    };
}

/// ParM parity models for the hosted models `eval` uses, trained by `approxifer
/// train-parity` with ParM's recipe (src/embedded/parity/; the README gives their epochs and
/// learning curves): `(architecture, dataset, K, weights)`.
static PARITY: &[(Architecture, Dataset, usize, &Aligned<[u8]>)] = &[
    parity!(Lenet5, FashionMnist, 2, "lenet5-fashion-mnist-k2.bpk"),
    parity!(Lenet5, FashionMnist, 4, "lenet5-fashion-mnist-k4.bpk"),
    parity!(Lenet5, FashionMnist, 8, "lenet5-fashion-mnist-k8.bpk"),
    parity!(Lenet5, FashionMnist, 10, "lenet5-fashion-mnist-k10.bpk"),
    parity!(Lenet5, FashionMnist, 12, "lenet5-fashion-mnist-k12.bpk"),
    parity!(DigitCnn, Mnist, 2, "digit-cnn-mnist-k2.bpk"),
    parity!(DigitCnn, Mnist, 4, "digit-cnn-mnist-k4.bpk"),
    parity!(DigitCnn, Mnist, 8, "digit-cnn-mnist-k8.bpk"),
    parity!(DigitCnn, Mnist, 10, "digit-cnn-mnist-k10.bpk"),
    parity!(DigitCnn, Mnist, 12, "digit-cnn-mnist-k12.bpk"),
];

/// The shipped parity model of `architecture` on `dataset` for groups of `k`, if there is one.
pub fn parity(
    architecture: Architecture,
    dataset: Dataset,
    k: usize,
    device: &Device,
) -> Option<Result<Classifier, ModelError>> {
    let (.., weights) = PARITY.iter().find(|(a, d, kk, _)| (*a, *d, *kk) == (architecture, dataset, k))?;
    Some(models::load_burnpack_bytes(Classifier::init(architecture, device), &weights.0))
}

/// The K values parity models are shipped for, for `architecture` on `dataset`.
pub fn parity_ks(architecture: Architecture, dataset: Dataset) -> Vec<usize> {
    PARITY.iter().filter(|(a, d, ..)| (*a, *d) == (architecture, dataset)).map(|(.., k, _)| *k).collect()
}

/// The embedded test sample.
pub fn sample() -> Images {
    let read = |bytes: &[u8]| -> IdxArray {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut raw).expect("the embedded sample is valid gzip");
        idx::parse(&raw).expect("the embedded sample is valid IDX")
    };
    let (images, labels) = (read(IMAGES), read(LABELS));
    Images { rows: images.dims[1], cols: images.dims[2], pixels: images.values, labels: labels.values }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn the_model_runs_in_place_on_the_cpu_backend_with_one_image() {
        assert_eq!(super::MODEL.0.as_ptr() as usize % 256, 0);
        let device = Device::flex();
        let model = super::model(&device).unwrap();
        let image = Tensor::<4>::from_data(TensorData::new(vec![0.1f32; 784], [1, 1, 28, 28]), &device);
        assert_eq!(model.forward(image).dims(), [1, 10]);
    }

    #[test]
    fn the_sample_is_1000_labelled_28x28_images() {
        let s = super::sample();
        assert_eq!((s.len(), s.rows, s.cols, s.pixels.len()), (1000, 28, 28, 1000 * 784));
        assert!(s.labels.iter().all(|&l| l < 10));
        // Every class occurs: it is a sample of the test set, not of one class.
        assert!((0..10).all(|c| s.labels.contains(&c)));
    }
}
