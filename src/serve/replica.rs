//! Model replicas for local workers: a Burn classifier on one device, answering one query at
//! a time with its class probabilities.

use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData, activation};

use super::worker::HostModel;
use crate::models::Classifier;

/// A replica of `model` on `device` taking queries of `shape` (one image: channels, rows,
/// columns) and answering the softmax of its logits. The coded schemes decode probabilities:
/// a smooth function of the query, as Berrut interpolation needs. A query of the wrong length
/// gets an empty answer, which the schemes count as no answer. Runs one forward pass before
/// returning, to warm the device.
pub fn classifier(model: &Classifier, device: &Device, shape: [usize; 3]) -> HostModel {
    let model = model.clone().to_device(device);
    // The first forward pass on a GPU compiles its kernels, seconds on some drivers: pay that
    // here, not within the first query's deadline.
    let _ = model.forward(Tensor::<4>::zeros([1, shape[0], shape[1], shape[2]], device)).into_data();
    let model = Mutex::new(model);
    let device = device.clone();
    Arc::new(move |x: &[f32]| {
        if x.len() != shape.iter().product::<usize>() {
            return Vec::new();
        }
        // The lock only orders this worker's own calls; each worker has its own replica.
        let Ok(model) = model.lock() else { return Vec::new() };
        let input = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [1, shape[0], shape[1], shape[2]]), &device);
        activation::softmax(model.forward(input), 1).into_data().try_into_vec::<f32>().unwrap_or_default()
    })
}
