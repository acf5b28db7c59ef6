//! `bench pipeline`: what coding costs around a model on one device. The fused pipeline's
//! encode and decode are timed next to the model's forward pass on the coded batch, and the
//! whole fused run next to a pipeline that reads the coded queries back to the host between
//! stages (CPU encode, upload, forward, read-back, CPU decode).

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use serde::Serialize;

use crate::fused::{CodedRunner, FusedCode};
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::{Code, CodeParams, cpu};
use crate::models::{Architecture, Classifier, IMAGE_SIDE};

/// What to measure.
#[derive(Clone, Debug)]
pub struct PipelineBenchConfig {
    pub architecture: Architecture,
    pub groups: usize,
    pub k: usize,
    pub stragglers: usize,
    pub repeats: usize,
}

/// Milliseconds per batch, medians over the repeats; the JSON of `bench pipeline --json`.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineBenchReport {
    pub adapter: String,
    pub model: String,
    pub groups: usize,
    pub k: usize,
    pub n: usize,
    pub encode_ms: f64,
    pub forward_ms: f64,
    pub decode_ms: f64,
    /// `(encode + decode) / forward`, in percent.
    pub overhead_percent: f64,
    pub fused_total_ms: f64,
    pub host_round_trip_total_ms: f64,
}

/// Median milliseconds of `run`, the device waited on after each, after warm-up runs (the
/// first runs compile and autotune kernels: seconds, not what a server sees).
fn median_ms(device: &Device, repeats: usize, mut run: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    const WARM_UP: usize = 3;
    let mut times = Vec::with_capacity(repeats);
    for i in 0..WARM_UP + repeats.max(1) {
        let start = Instant::now();
        run()?;
        device.sync().map_err(|e| anyhow::anyhow!("device: {e:?}"))?;
        if i >= WARM_UP {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub fn run_pipeline_bench(choice: &AdapterChoice, config: &PipelineBenchConfig) -> anyhow::Result<PipelineBenchReport> {
    let burn = crate::backend::BurnDevice::select(choice)?;
    let device = burn.device.clone();
    let (k, n) = (config.k, config.k + config.stragglers);
    let code = Code::new(CodeParams::builder(k, n).stragglers(config.stragglers).build()?)?;
    let model = Classifier::init(config.architecture, &device);
    let runner = CodedRunner::new(|x: Tensor<4>| model.forward(x), FusedCode::new(code.clone())?, device.clone())?;
    let (groups, side) = (config.groups, IMAGE_SIDE);
    let queries = Tensor::<4>::random([groups * k, 1, side, side], Distribution::Default, &device);
    let masks: Vec<bool> = (0..groups * n).map(|i| i % n != (i / n) % n || config.stragglers == 0).collect();

    let coded = runner.encode(queries.clone())?;
    let predictions = runner.forward(coded.clone());
    let encode_ms =
        median_ms(&device, config.repeats, || runner.encode(queries.clone()).map(drop).map_err(Into::into))?;
    let forward_ms = median_ms(&device, config.repeats, || {
        drop(runner.forward(coded.clone()));
        Ok(())
    })?;
    let decode_ms = median_ms(&device, config.repeats, || {
        runner.decode(predictions.clone(), &masks).map(drop).map_err(Into::into)
    })?;
    let fused_total_ms =
        median_ms(&device, config.repeats, || runner.infer(queries.clone(), &masks).map(drop).map_err(Into::into))?;

    // The same work with the coded queries and predictions crossing to the host.
    let d = side * side;
    // try_into_data: a batch too large for the device is an error here, not a panic.
    let read_back = |what: &str, e: &dyn std::fmt::Debug| anyhow::anyhow!("reading {what} back from the device: {e:?}");
    let host_queries = queries
        .clone()
        .try_into_data()
        .map_err(|e| read_back("the queries", &e))?
        .try_to_vec::<f32>()
        .map_err(|e| read_back("the queries", &e))?;
    let host_round_trip_total_ms = median_ms(&device, config.repeats, || {
        let coded = cpu::encode_to_vec(&code, &host_queries, d)?;
        let coded = Tensor::<4>::from_data(TensorData::new(coded, [groups * n, 1, side, side]), &device);
        let predictions = model
            .forward(coded)
            .try_into_data()
            .map_err(|e| read_back("the predictions", &e))?
            .try_to_vec::<f32>()
            .map_err(|e| read_back("the predictions", &e))?;
        let decoded = cpu::decode_to_vec(&code, &predictions, crate::models::CLASSES, &masks)?;
        drop(Tensor::<2>::from_data(TensorData::new(decoded, [groups * k, crate::models::CLASSES]), &device));
        Ok(())
    })?;
    Ok(PipelineBenchReport {
        adapter: burn.adapter,
        model: config.architecture.name().into(),
        groups,
        k,
        n,
        encode_ms,
        forward_ms,
        decode_ms,
        overhead_percent: 100.0 * (encode_ms + decode_ms) / forward_ms,
        fused_total_ms,
        host_round_trip_total_ms,
    })
}
