//! The fused path: `shaders/` kernels launched on Burn's wgpu tensors, and their CPU twins on
//! Burn's flex tensors (what runs with no Vulkan driver), checked against the CPU reference
//! kernels, around a model whose reference run is on flex.

use approxifer::fused::{self, CodedRunner, FusedCode, FusedError};
use approxifer::kernels::{Code, CodeParams, Layout, Tolerance, cpu};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::tensor::{DType, Device, DeviceKind, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn gpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

/// Every device the fused stages run on: wgpu (the WGSL kernels) and flex (their CPU twins).
fn devices() -> [Device; 2] {
    [gpu(), Device::flex()]
}

fn code(k: usize, n: usize, s: usize, layout: Layout) -> Code {
    Code::new(CodeParams::builder(k, n).stragglers(s).layout(layout).build().unwrap()).unwrap()
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Masks with exactly `S` stragglers per group, chosen at random.
fn masks(code: &Code, groups: usize, seed: u64) -> Vec<bool> {
    let (n, s) = (code.params().workers(), code.params().stragglers());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![true; groups * n];
    for group in out.chunks_exact_mut(n) {
        let mut dropped = 0;
        while dropped < s {
            let w = rng.random_range(0..n);
            if group[w] {
                group[w] = false;
                dropped += 1;
            }
        }
    }
    out
}

fn host(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn assert_close(actual: &[f32], expected: &[f32], tolerance: Tolerance, what: &str) {
    let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    if let Err(mismatch) = tolerance.check(widen(actual), widen(expected)) {
        panic!("{what}: {mismatch}");
    }
}

#[test]
fn encode_on_burn_tensors_matches_the_cpu_path() {
    for (k, n, d, layout) in
        [(3, 5, 784, Layout::NonSystematic), (8, 10, 13, Layout::Systematic), (2, 4, 1, Layout::NonSystematic)]
    {
        let c = code(k, n, 1, layout);
        let groups = 3;
        let queries = values(groups * k * d, d as u64);
        let expected = cpu::encode_to_vec(&c, &queries, d).unwrap();
        for device in devices() {
            let tensor = Tensor::<3>::from_data(TensorData::new(queries.clone(), [groups, k, d]), &device);
            let coded = fused::encode(tensor, &FusedCode::new(c.clone()).unwrap()).unwrap();
            assert_eq!((coded.dims(), coded.device()), ([groups, n, d], device.clone()));
            assert_close(&host(coded), &expected, Tolerance::BALANCED, &format!("encode K={k} N={n} D={d} {device:?}"));
        }
    }
}

#[test]
fn half_precision_tensors_on_flex_are_coded_in_half_precision() {
    let (k, n, d, groups) = (4, 6, 9, 2);
    let c = code(k, n, 1, Layout::NonSystematic);
    let queries = values(groups * k * d, 5);
    let fc = FusedCode::new(c.clone()).unwrap();
    let halves =
        Tensor::<3>::from_data(TensorData::new(queries.clone(), [groups, k, d]), (&Device::flex(), DType::F16));
    let coded = fused::encode(halves, &fc).unwrap();
    assert_eq!(coded.dtype(), DType::F16);
    let expected = cpu::encode_to_vec(&c, &queries, d).unwrap();
    assert_close(&coded.clone().try_into_vec_as::<f32>().unwrap(), &expected, Tolerance::PERMISSIVE, "encode in f16");
    let decoded = fused::decode(coded, &masks(&c, groups, 3), &fc).unwrap();
    assert_eq!(decoded.dtype(), DType::F16);
}

#[test]
fn decode_on_burn_tensors_matches_the_cpu_path_for_random_masks() {
    for (k, n, s, classes, layout) in [(4, 6, 2, 10, Layout::NonSystematic), (8, 11, 3, 7, Layout::Systematic)] {
        let c = code(k, n, s, layout);
        let groups = 17;
        let outputs = values(groups * n * classes, classes as u64);
        let masks = masks(&c, groups, 7);
        let expected = cpu::decode_to_vec(&c, &outputs, classes, &masks).unwrap();
        for device in devices() {
            let tensor = Tensor::<3>::from_data(TensorData::new(outputs.clone(), [groups, n, classes]), &device);
            let decoded = fused::decode(tensor, &masks, &FusedCode::new(c.clone()).unwrap()).unwrap();
            assert_eq!((decoded.dims(), decoded.device()), ([groups, k, classes], device.clone()));
            let what = format!("decode K={k} N={n} S={s} {device:?}");
            assert_close(&host(decoded), &expected, Tolerance::BALANCED, &what);
        }
    }
}

/// A small MLP, the hosted model.
#[derive(Module, Debug)]
struct Mlp {
    first: Linear,
    second: Linear,
    relu: Relu,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Mlp {
            first: LinearConfig::new(12, 16).init(device),
            second: LinearConfig::new(16, 5).init(device),
            relu: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.second.forward(self.relu.forward(self.first.forward(x)))
    }
}

#[test]
fn the_runner_matches_the_cpu_reference_pipeline() {
    let (k, n, s, d, groups) = (4, 6, 2, 12, 9);
    let c = code(k, n, s, Layout::NonSystematic);
    let gpu_model = Mlp::new(&gpu());
    let cpu_model = gpu_model.clone().to_device(&Device::flex());
    let queries = values(groups * k * d, 3);
    let masks = masks(&c, groups, 11);

    // Reference: CPU encode, the same weights on Burn's CPU device, CPU decode.
    let coded = cpu::encode_to_vec(&c, &queries, d).unwrap();
    let coded = Tensor::<2>::from_data(TensorData::new(coded, [groups * n, d]), &Device::flex());
    let predictions = cpu_model.forward(coded).into_data().try_to_vec::<f32>().unwrap();
    let expected = cpu::decode_to_vec(&c, &predictions, 5, &masks).unwrap();

    for (model, device) in [(&gpu_model, gpu()), (&cpu_model, Device::flex())] {
        let runner =
            CodedRunner::new(|x: Tensor<2>| model.forward(x), FusedCode::new(c.clone()).unwrap(), device.clone())
                .unwrap();
        let input = Tensor::<2>::from_data(TensorData::new(queries.clone(), [groups * k, d]), &device);
        let decoded = runner.infer(input, &masks).unwrap();
        assert_eq!(decoded.dims(), [groups * k, 5]);
        assert_eq!(decoded.device(), device, "the predictions stay on the device");
        let decoded = decoded.into_data().try_to_vec::<f32>().unwrap();
        assert_close(&decoded, &expected, Tolerance::BALANCED, &format!("pipeline on {device:?}"));
    }
}

#[test]
fn each_stage_hands_the_next_a_tensor_on_the_same_device() {
    let c = code(3, 5, 1, Layout::NonSystematic);
    let model = |x: Tensor<2>| x.clone().slice([0..x.dims()[0], 0..2]);
    let runner = CodedRunner::new(model, FusedCode::new(c.clone()).unwrap(), gpu()).unwrap();
    let queries = Tensor::<2>::from_data(TensorData::new(values(6 * 4, 1), [6, 4]), &gpu());
    let coded: Tensor<2> = runner.encode(queries).unwrap();
    assert_eq!((coded.dims(), coded.device()), ([10, 4], gpu()));
    let predictions: Tensor<2> = runner.forward(coded);
    assert_eq!((predictions.dims(), predictions.device()), ([10, 2], gpu()));
    let decoded: Tensor<2> = runner.decode(predictions, &masks(&c, 2, 5)).unwrap();
    assert_eq!((decoded.dims(), decoded.device()), ([6, 2], gpu()));
}

#[test]
fn bad_input_is_a_typed_error_before_any_launch() {
    let c = code(3, 5, 2, Layout::NonSystematic);
    let fc = FusedCode::new(c.clone()).unwrap();
    let wrong_rows = Tensor::<3>::from_data(TensorData::new(values(2 * 4 * 3, 1), [2, 4, 3]), &gpu());
    assert!(matches!(fused::encode(wrong_rows, &fc), Err(FusedError::Shape { what: "queries", .. })));

    // Autodiff tensors are refused (the kernels have no backward pass), on flex as on wgpu.
    for device in devices() {
        let tracked = Tensor::<3>::from_data(TensorData::new(values(3 * 3, 1), [1, 3, 3]), &device.clone().autodiff());
        assert!(matches!(fused::encode(tracked, &fc), Err(FusedError::Device { .. })), "{device:?}");
    }
    // A dtype the kernels do not store is refused on flex too (its CPU twins could, but the
    // stages keep one contract).
    let doubles = Tensor::<3>::from_data(TensorData::new(values(3 * 3, 1), [1, 3, 3]), (&Device::flex(), DType::F64));
    assert!(matches!(fused::encode(doubles, &fc), Err(FusedError::DType { .. })));

    let outputs = Tensor::<3>::from_data(TensorData::new(values(5 * 2, 1), [1, 5, 2]), &gpu());
    let too_few = [true, true, false, false, false];
    let e = fused::decode(outputs.clone(), &too_few, &fc).unwrap_err();
    assert!(matches!(e, FusedError::Codec(approxifer::kernels::Error::NotEnoughResponders { .. })), "{e}");
    let e = fused::decode(outputs, &[true; 10], &fc).unwrap_err();
    assert!(matches!(e, FusedError::Codec(approxifer::kernels::Error::ShapeMismatch { .. })), "{e}");

    let runner = CodedRunner::new(|x: Tensor<2>| x, fc.clone(), gpu()).unwrap();
    let not_whole = Tensor::<2>::from_data(TensorData::new(values(4 * 2, 1), [4, 2]), &gpu());
    assert!(matches!(runner.encode(not_whole), Err(FusedError::Shape { .. })));
    let tracked = Device::flex().autodiff();
    assert!(matches!(CodedRunner::new(|x: Tensor<2>| x, fc, tracked), Err(FusedError::Device { .. })));
}

#[test]
fn encoding_a_subset_of_workers_gives_those_rows_of_the_full_encode_on_both_paths() {
    for (k, n, d, workers) in [(4, 6, 784, vec![5, 0, 3]), (3, 5, 7, vec![2]), (8, 10, 13, (0..10).collect::<Vec<_>>())]
    {
        let c = code(k, n, 1, Layout::NonSystematic);
        let groups = 3;
        let queries = values(groups * k * d, 11);
        let full = cpu::encode_to_vec(&c, &queries, d).unwrap();
        // The CPU twin: exactly the chosen rows of the full encode, in the order asked.
        let rows = cpu::encode_rows_to_vec(&c, &workers, &queries, d).unwrap();
        let m = workers.len();
        for g in 0..groups {
            for (r, &w) in workers.iter().enumerate() {
                let (got, want) = (&rows[(g * m + r) * d..][..d], &full[(g * n + w) * d..][..d]);
                assert_eq!(got, want, "K={k} N={n}: group {g}, worker {w}");
            }
        }
        // The fused stage on Burn tensors agrees with it, on wgpu (WGSL) and on flex.
        for device in devices() {
            let tensor = Tensor::<3>::from_data(TensorData::new(queries.clone(), [groups, k, d]), &device);
            let on_device = fused::encode_rows(tensor, None, &FusedCode::new(c.clone()).unwrap(), &workers).unwrap();
            assert_eq!(on_device.dims(), [groups, m, d]);
            assert_close(&host(on_device), &rows, Tolerance::BALANCED, &format!("encode_rows {device:?}"));
        }
    }
    // A worker the code does not have is a typed error on both paths, before any launch.
    let c = code(2, 3, 1, Layout::NonSystematic);
    let queries = values(2 * 4, 3);
    let err = cpu::encode_rows_to_vec(&c, &[0, 3], &queries, 4).unwrap_err();
    assert_eq!(err, approxifer::kernels::Error::WorkerOutOfRange { worker: 3, workers: 3 });
    let tensor = Tensor::<3>::from_data(TensorData::new(queries, [1, 2, 4]), &gpu());
    let err = fused::encode_rows(tensor, None, &FusedCode::new(c).unwrap(), &[3]).unwrap_err();
    assert!(matches!(err, FusedError::Codec(approxifer::kernels::Error::WorkerOutOfRange { .. })), "{err}");
}

#[test]
fn masked_encoding_on_burn_tensors_matches_the_cpu_and_refuses_missing_masks() {
    use approxifer::kernels::MaskPlacement;
    use approxifer::kernels::privacy::MaskSampler;
    let (k, n, t, d, groups) = (8, 11, 2, 784, 3);
    let params = CodeParams::builder(k, n).stragglers(1).privacy(t).masks(MaskPlacement::Interleaved).build().unwrap();
    let c = Code::new(params).unwrap();
    let fused_code = FusedCode::new(c.clone()).unwrap();
    let queries = values(groups * k * d, 21);
    let masks = MaskSampler::seeded(2.0, 22).unwrap().masks(&c, groups, d);
    let expected = cpu::encode_masked_to_vec(&c, &queries, &masks, d).unwrap();
    for device in devices() {
        let q = || Tensor::<3>::from_data(TensorData::new(queries.clone(), [groups, k, d]), &device);
        let m = Tensor::<3>::from_data(TensorData::new(masks.clone(), [groups, t, d]), &device);
        let coded = fused::encode_masked(q(), Some(m.clone()), &fused_code).unwrap();
        assert_eq!(coded.dims(), [groups, n, d]);
        assert_close(&host(coded), &expected, Tolerance::BALANCED, &format!("encode_masked {device:?}"));
        // A subset of workers: those rows.
        let rows = fused::encode_rows(q(), Some(m.clone()), &fused_code, &[7, 2]).unwrap();
        let host_rows = host(rows);
        for g in 0..groups {
            for (r, w) in [7, 2].into_iter().enumerate() {
                let want = &expected[(g * n + w) * d..][..d];
                assert_close(
                    &host_rows[(g * 2 + r) * d..][..d],
                    want,
                    Tolerance::BALANCED,
                    &format!("encode_rows masked {device:?}"),
                );
            }
        }
        // Without masks, or with masks of the wrong shape: typed errors, nothing launched.
        let err = fused::encode(q(), &fused_code).unwrap_err();
        assert!(
            matches!(err, FusedError::Codec(approxifer::kernels::Error::MasksMismatch { privacy: 2, .. })),
            "{err}"
        );
        let short = Tensor::<3>::from_data(TensorData::new(masks[..groups * d].to_vec(), [groups, 1, d]), &device);
        let err = fused::encode_masked(q(), Some(short), &fused_code).unwrap_err();
        assert!(matches!(err, FusedError::Shape { what: "masks", .. }), "{err}");
        // And the runner codes a private batch end to end.
        let runner = CodedRunner::new(|x: Tensor<2>| x, fused_code.clone(), device.clone()).unwrap();
        let flat_q = Tensor::<2>::from_data(TensorData::new(queries.clone(), [groups * k, d]), &device);
        let flat_m = Tensor::<2>::from_data(TensorData::new(masks.clone(), [groups * t, d]), &device);
        let coded = runner.encode_masked(flat_q.clone(), Some(flat_m)).unwrap();
        assert_eq!(coded.dims(), [groups * n, d]);
        assert_close(
            &host(coded.reshape([groups, n, d])),
            &expected,
            Tolerance::BALANCED,
            &format!("runner {device:?}"),
        );
        assert!(runner.encode(flat_q).is_err());
    }
}
