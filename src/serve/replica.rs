//! Model replicas for local workers: a Burn classifier on one device answering a batch of
//! flat queries with their class probabilities, in one forward pass.

use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::tensor::{Device, Tensor, activation};

use super::worker::ServedModel;
use crate::models::Classifier;

/// A replica of `model` on `device` taking flat queries `[B, D]` of images of `shape`
/// (channels, rows, columns; `D` their product) and answering the softmax of its logits
/// `[B, C]`. The coded schemes decode probabilities: a smooth function of the query, as Berrut
/// interpolation needs. Runs one forward pass before returning, to warm the device.
pub fn classifier(model: &Classifier, device: &Device, shape: [usize; 3]) -> ServedModel {
    replica(model, device, shape, true)
}

/// As [`classifier`], answering the logits themselves (what ParM's subtraction decodes).
pub fn classifier_logits(model: &Classifier, device: &Device, shape: [usize; 3]) -> ServedModel {
    replica(model, device, shape, false)
}

fn replica(model: &Classifier, device: &Device, shape: [usize; 3], softmax: bool) -> ServedModel {
    let model = model.clone().to_device(device);
    // The first forward pass on a GPU compiles its kernels, seconds on some drivers: pay that
    // here, not within the first query's deadline.
    let _ = model.forward(Tensor::<4>::zeros([1, shape[0], shape[1], shape[2]], device)).into_data();
    // The lock only orders this worker's own calls; each worker has its own replica.
    let model = Mutex::new(model);
    Arc::new(move |x: Tensor<2>| {
        let [batch, _] = x.dims();
        let images = x.reshape([batch, shape[0], shape[1], shape[2]]);
        let logits = match model.lock() {
            Ok(model) => model.forward(images),
            Err(poisoned) => poisoned.into_inner().forward(images),
        };
        if softmax { activation::softmax(logits, 1) } else { logits }
    })
}
