//! [`CodedRunner`]: encode, forward, decode, each stage a device tensor in and out.

use burn::tensor::{Device, Tensor};

use super::{FusedCode, FusedError, decode, encode_masked};

/// What the runner hosts: a batch `[batch, ...]` (rank `D`) to predictions `[batch, classes]`.
/// Implemented for every `Fn(Tensor<D>) -> Tensor<2>`, so a Burn module is hosted as
/// `|x| model.forward(x)`.
pub trait Model<const D: usize> {
    fn forward(&self, input: Tensor<D>) -> Tensor<2>;
}

impl<const D: usize, F: Fn(Tensor<D>) -> Tensor<2>> Model<D> for F {
    fn forward(&self, input: Tensor<D>) -> Tensor<2> {
        self(input)
    }
}

/// Coded inference with an unchanged model on one wgpu device (or flex: see the
/// [module](super)). Queries come in batches of
/// whole groups (`B x K` inputs); the model sees `B x N` coded inputs; predictions come back
/// decoded for the `B x K` queries. The stages pass [`Tensor`]s, which stay on the device.
pub struct CodedRunner<M, const D: usize> {
    model: M,
    code: FusedCode,
    device: Device,
}

impl<M: Model<D>, const D: usize> CodedRunner<M, D> {
    /// A runner for `model` with `code` on `device`, a Burn wgpu or flex device.
    pub fn new(model: M, code: FusedCode, device: Device) -> Result<Self, FusedError> {
        super::place("the runner's device", &device, burn::tensor::DType::F32)?;
        Ok(CodedRunner { model, code, device })
    }

    /// The code.
    pub fn code(&self) -> &FusedCode {
        &self.code
    }

    /// The device every stage runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The hosted model.
    pub fn model(&self) -> &M {
        &self.model
    }

    /// Stage 1: `B x K` queries `[B*K, ...]` into `B x N` coded queries `[B*N, ...]`, query
    /// `b*K + j` being query `j` of group `b`. For a code without privacy.
    pub fn encode(&self, queries: Tensor<D>) -> Result<Tensor<D>, FusedError> {
        self.encode_masked(queries, None)
    }

    /// Stage 1 of a private code: as [`Self::encode`], with `B x T` masks `[B*T, ...]` shaped
    /// like the queries (mask `b*T + t` is mask `t` of group `b`).
    pub fn encode_masked(&self, queries: Tensor<D>, masks: Option<Tensor<D>>) -> Result<Tensor<D>, FusedError> {
        let p = self.code.code().params();
        let (k, t, n) = (p.queries(), p.privacy(), p.workers());
        let dims = queries.dims();
        let groups = whole_groups("queries", &dims, k)?;
        let row: usize = dims[1..].iter().product();
        let masks = match masks {
            Some(masks) => {
                let mask_dims = masks.dims();
                if t == 0 || mask_dims[1..] != dims[1..] || mask_dims[0] != groups * t {
                    let expected = format!("[B*T, ...] = [{}, ...] shaped like the queries", groups * t);
                    return Err(FusedError::Shape { what: "masks", expected, actual: mask_dims.to_vec() });
                }
                Some(masks.reshape([groups, t, row]))
            }
            None => None,
        };
        let coded = encode_masked(queries.reshape([groups, k, row]), masks, &self.code)?;
        let mut coded_dims = dims;
        coded_dims[0] = groups * n;
        Ok(coded.reshape(coded_dims))
    }

    /// Stage 2: the unchanged model on the coded queries (what each worker runs).
    pub fn forward(&self, coded: Tensor<D>) -> Tensor<2> {
        self.model.forward(coded)
    }

    /// Stage 3: `[B*N, C]` worker predictions into `[B*K, C]` decoded predictions, with
    /// `masks` (`B x N`, row-major) true where the worker answered.
    pub fn decode(&self, predictions: Tensor<2>, masks: &[bool]) -> Result<Tensor<2>, FusedError> {
        let (k, n) = (self.code.code().params().queries(), self.code.code().params().workers());
        let [rows, classes] = predictions.dims();
        let groups = whole_groups("worker predictions", &[rows, classes], n)?;
        let decoded = decode(predictions.reshape([groups, n, classes]), masks, &self.code)?;
        Ok(decoded.reshape([groups * k, classes]))
    }

    /// All three stages: predictions for `[B*K, ...]` queries when the workers flagged in
    /// `masks` answer.
    pub fn infer(&self, queries: Tensor<D>, masks: &[bool]) -> Result<Tensor<2>, FusedError> {
        let coded = self.encode(queries)?;
        let predictions = self.forward(coded);
        self.decode(predictions, masks)
    }
}

/// Groups in a batch whose first dimension must be a non-zero multiple of `per_group`.
fn whole_groups(what: &'static str, dims: &[usize], per_group: usize) -> Result<usize, FusedError> {
    if dims[0] == 0 || dims[0] % per_group != 0 {
        return Err(FusedError::Shape {
            what,
            expected: format!("a batch of whole groups of {per_group}"),
            actual: dims.to_vec(),
        });
    }
    Ok(dims[0] / per_group)
}
