//! What the serving tests share: a smooth model on tensors, its answers on the host, and
//! queries.

use std::sync::Arc;
use std::time::Duration;

use approxifer::kernels::{Code, Locator};
use approxifer::serve::{Codec, CoordinatorConfig, FaultPlan, ServedModel};
use burn::tensor::{Tensor, TensorData};

/// Values per query and per prediction.
pub const D: usize = 6;
pub const C: usize = 3;

/// A smooth model on tensors: output `c` of a query is `sum_i tanh((i + c) * 0.3 * x_i)`.
pub fn model() -> ServedModel {
    Arc::new(|x: Tensor<2>| {
        let [batch, d] = x.dims();
        let weights: Vec<f32> = (0..C).flat_map(|c| (0..d).map(move |i| (i + c) as f32 * 0.3)).collect();
        let weights = Tensor::<2>::from_data(TensorData::new(weights, [C, d]), &x.device()).reshape([1, C, d]);
        (x.reshape([batch, 1, d]) * weights).tanh().sum_dim(2).reshape([batch, C])
    })
}

/// The model's own answer to one query, on the host.
pub fn expected(query: &[f32]) -> Vec<f32> {
    (0..C).map(|c| query.iter().enumerate().map(|(i, v)| ((i + c) as f32 * 0.3 * v).tanh()).sum()).collect()
}

/// Query `i`: `D` values in [-0.5, 0.5).
pub fn query(i: usize) -> Vec<f32> {
    (0..D).map(|d| ((i * 7 + d * 3) % 19) as f32 / 19.0 - 0.5).collect()
}

/// A coordinator's settings for `code` over this model: batches of up to 8 groups sent 2 ms
/// after their first query, decoded on the CPU, no hedges, `faults` drawn with a fixed seed.
pub fn coordinator_config(
    code: Code,
    faults: Option<FaultPlan>,
    capacity: usize,
    deadline: Duration,
) -> CoordinatorConfig {
    CoordinatorConfig {
        code,
        input_len: D,
        output_len: C,
        max_batch: 8,
        max_queue_delay: Duration::from_millis(2),
        deadline,
        capacity,
        faults: faults.map(|plan| (plan, 11)),
        codec: Codec::Cpu,
        hedge_after: None,
        locator: Locator::Robust,
        partial_calibrations: Vec::new(),
        learning: None,
        mask_sigma: 1.0,
        trace_slower_than: None,
        decode_grace: approxifer::serve::DEFAULT_DECODE_GRACE,
    }
}
