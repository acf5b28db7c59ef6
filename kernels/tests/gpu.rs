//! The WGSL kernels: validated with naga (no device), and run on the adapter `scripts/test.sh`
//! guarantees (lavapipe where there is no GPU), against the CPU reference path.
//!
//! A missing adapter fails these tests with a message saying how to get one; they never pass
//! silently.

mod support;

use std::sync::OnceLock;

use approxifer_kernels::gpu::{
    AdapterChoice, DeviceTensor, Elem, GpuCode, GpuCodec, GpuContext, GpuElement, GpuError, Shader, ShaderConfig,
};
use approxifer_kernels::{Code, CodeParams, Error, Layout, NodeFamily, Tolerance, cpu};
use half::f16;
use support::{random_f32, random_masks};
use wgpu::util::DeviceExt;

fn codec() -> &'static GpuCodec {
    static CODEC: OnceLock<GpuCodec> = OnceLock::new();
    CODEC.get_or_init(|| match GpuContext::new(&AdapterChoice::from_env()) {
        Ok(ctx) => {
            eprintln!("GPU tests run on: {} ({:?})", ctx.adapter_name(), ctx.adapter_info().backend);
            GpuCodec::new(ctx)
        }
        Err(e) => panic!("GPU tests need an adapter and found none: {e}. Run scripts/setup.sh (installs lavapipe)."),
    })
}

fn code(k: usize, n: usize, s: usize) -> Code {
    Code::new(CodeParams::builder(k, n).stragglers(s).build().unwrap()).unwrap()
}

fn f64s<T: GpuElement + Into<f64>>(v: &[T]) -> impl Iterator<Item = f64> + '_ {
    v.iter().map(|&x| x.into())
}

// ---- naga: every shader variant the host can compose is valid WGSL ------------------------------

#[test]
fn every_shader_variant_validates_with_naga() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    for shader in Shader::ALL {
        for elem in [Elem::F32, Elem::F16] {
            for packing in [1, 4] {
                for (queries, workers) in [(1, 1), (2, 3), (8, 10), (12, 37)] {
                    let config = ShaderConfig { shader, elem, packing, queries, workers };
                    let source = config.source();
                    let module = naga::front::wgsl::parse_str(&source)
                        .unwrap_or_else(|e| panic!("{config:?} does not parse:\n{}", e.emit_to_string(&source)));
                    // The capabilities the device will have: f16 only where it is asked for.
                    let caps = if elem == Elem::F16 { Capabilities::SHADER_FLOAT16 } else { Capabilities::empty() };
                    Validator::new(ValidationFlags::all(), caps)
                        .validate(&module)
                        .unwrap_or_else(|e| panic!("{config:?} does not validate: {e:?}"));
                }
            }
        }
    }
}

/// The convention both launchers rely on (raw wgpu here, Burn's in the `approxifer` crate):
/// storage tensors at bindings 0.., then one uniform block at the last binding, whose size is
/// the 32 bytes of params plus the code's padded table.
#[test]
fn every_shader_binds_storage_tensors_then_one_uniform_block() {
    use approxifer_kernels::gpu::launch::info_bytes;
    for shader in Shader::ALL {
        let (queries, workers) = (8, 10);
        let config = ShaderConfig { shader, elem: Elem::F32, packing: 4, queries, workers };
        let module = naga::front::wgsl::parse_str(&config.source()).unwrap();
        let mut bindings: Vec<(u32, naga::AddressSpace, naga::Handle<naga::Type>)> = module
            .global_variables
            .iter()
            .filter_map(|(_, v)| v.binding.as_ref().map(|b| (b.binding, v.space, v.ty)))
            .collect();
        bindings.sort_by_key(|b| b.0);
        let (last, tensors) = bindings.split_last().unwrap();
        assert_eq!(bindings.iter().map(|b| b.0).collect::<Vec<_>>(), (0..bindings.len() as u32).collect::<Vec<_>>());
        assert!(tensors.iter().all(|b| matches!(b.1, naga::AddressSpace::Storage { .. })), "{shader:?}");
        assert_eq!(last.1, naga::AddressSpace::Uniform, "{shader:?}");
        let mut layouter = naga::proc::Layouter::default();
        layouter.update(module.to_ctx()).unwrap();
        let table = if shader == Shader::Copy { 0 } else { (queries * workers) as usize };
        assert_eq!(u64::from(layouter[last.2].size), info_bytes(table), "{shader:?}");
    }
}

#[test]
fn f16_shaders_are_rejected_without_the_capability() {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let config = ShaderConfig { shader: Shader::Encode, elem: Elem::F16, packing: 4, queries: 2, workers: 3 };
    let module = naga::front::wgsl::parse_str(&config.source()).unwrap();
    assert!(Validator::new(ValidationFlags::all(), Capabilities::empty()).validate(&module).is_err());
}

// ---- the device against the CPU reference ---------------------------------------------------------

/// Encodes and decodes on both paths and compares them.
fn cross_check(code: &Code, groups: usize, row_len: usize, seed: u64) {
    let gpu = codec();
    let (k, n, s) = (code.params().queries(), code.params().workers(), code.params().stragglers());
    let what = format!("{:?} B = {groups} D = {row_len}", code.params());
    let queries = random_f32(groups * k * row_len, seed);
    let expected = cpu::encode_to_vec(code, &queries, row_len).unwrap();
    let coded = gpu.encode(code, &queries, row_len).unwrap();
    Tolerance::BALANCED.check(f64s(&coded), f64s(&expected)).unwrap_or_else(|m| panic!("encode {what}: {m}"));

    let outputs = random_f32(groups * n * row_len, seed + 1);
    let masks = random_masks(groups, n, s, seed + 2);
    let expected = cpu::decode_to_vec(code, &outputs, row_len, &masks).unwrap();
    let decoded = gpu.decode(code, &outputs, row_len, &masks).unwrap();
    // The GPU sums numerator and denominator separately in f32; allow a little more.
    let tolerance = Tolerance { relative: 1e-4, absolute: 1e-4 };
    tolerance.check(f64s(&decoded), f64s(&expected)).unwrap_or_else(|m| panic!("decode {what}: {m}"));
}

#[test]
fn gpu_matches_cpu_across_shapes() {
    // D = 1, 3 and 13 (scalar path), 4 and 784 (vec4 path); B = 1; classifier-sized outputs.
    for (k, n, s, groups, row_len) in
        [(2, 3, 1, 5, 1), (8, 10, 2, 7, 13), (5, 9, 2, 3, 3), (8, 9, 1, 1, 784), (12, 13, 1, 64, 10), (4, 6, 2, 33, 4)]
    {
        cross_check(&code(k, n, s), groups, row_len, 17);
    }
}

#[test]
fn gpu_matches_cpu_for_every_layout_and_family_with_coincident_nodes() {
    for layout in [Layout::NonSystematic, Layout::Systematic] {
        for family in NodeFamily::ALL {
            for (k, n) in [(3, 5), (8, 17), (1, 3)] {
                let params = CodeParams::builder(k, n).stragglers(n - k).nodes(family).layout(layout).build().unwrap();
                cross_check(&Code::new(params).unwrap(), 9, 8, 23);
            }
        }
    }
}

#[test]
fn masked_encoding_on_the_gpu_matches_the_cpu() {
    use approxifer_kernels::MaskPlacement;
    use approxifer_kernels::privacy::MaskSampler;
    let gpu = codec();
    for (k, n, t, placement, groups, row_len) in [
        (8, 10, 1, MaskPlacement::Tail, 7, 784),
        (8, 11, 2, MaskPlacement::Interleaved, 5, 13),
        (3, 9, 4, MaskPlacement::Tail, 2, 4),
    ] {
        let params = CodeParams::builder(k, n).stragglers(1).privacy(t).masks(placement).build().unwrap();
        let code = Code::new(params).unwrap();
        let queries = random_f32(groups * k * row_len, 31);
        let masks = MaskSampler::seeded(4.0, 32).unwrap().masks(&code, groups, row_len);
        let expected = cpu::encode_masked_to_vec(&code, &queries, &masks, row_len).unwrap();
        let coded = gpu.encode_masked(&code, &queries, &masks, row_len).unwrap();
        Tolerance::BALANCED.check(f64s(&coded), f64s(&expected)).unwrap_or_else(|m| panic!("{params:?}: {m}"));
        // Without masks the GPU refuses, as the CPU does.
        let e = gpu.encode(&code, &queries, row_len).unwrap_err();
        assert!(matches!(e, GpuError::Codec(Error::MasksMismatch { .. })), "{e}");
    }
}

#[test]
fn gpu_matches_cpu_in_f16() {
    let gpu = codec();
    let code = code(8, 10, 2);
    let queries: Vec<f16> = random_f32(6 * 8 * 16, 31).into_iter().map(f16::from_f32).collect();
    if !gpu.context().supports_f16() {
        let e = gpu.encode(&code, &queries, 16).unwrap_err();
        assert!(matches!(e, GpuError::F16Unsupported { .. }), "{e}");
        panic!("adapter {} lacks SHADER_F16: the f16 kernels were not tested", gpu.context().adapter_name());
    }
    let expected = cpu::encode_to_vec(&code, &queries, 16).unwrap();
    let coded = gpu.encode(&code, &queries, 16).unwrap();
    Tolerance::PERMISSIVE.check(f64s(&coded), f64s(&expected)).unwrap();
    let masks = random_masks(6, 10, 2, 32);
    let expected = cpu::decode_to_vec(&code, &coded, 16, &masks).unwrap();
    let decoded = gpu.decode(&code, &coded, 16, &masks).unwrap();
    Tolerance::PERMISSIVE.check(f64s(&decoded), f64s(&expected)).unwrap();
}

#[test]
fn non_responders_rows_are_never_read_on_the_gpu() {
    let code = code(3, 5, 2);
    let mut outputs = random_f32(4 * 5 * 8, 41);
    let masks = random_masks(4, 5, 2, 42);
    let clean = codec().decode(&code, &outputs, 8, &masks).unwrap();
    for (w, answered) in masks.iter().enumerate() {
        if !answered {
            outputs[w * 8..w * 8 + 8].fill(f32::NAN);
        }
    }
    assert_eq!(codec().decode(&code, &outputs, 8, &masks).unwrap(), clean);
}

// ---- buffers filled with a sentinel: every output element is written ------------------------------

const SENTINEL: f32 = -12345.5;

fn sentinel_buffer(ctx: &GpuContext, len: usize) -> wgpu::Buffer {
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("sentinel"),
        contents: bytemuck::cast_slice(&vec![SENTINEL; len]),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}

fn storage(ctx: &GpuContext, values: &[f32]) -> wgpu::Buffer {
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("input"),
        contents: bytemuck::cast_slice(values),
        usage: wgpu::BufferUsages::STORAGE,
    })
}

fn read(ctx: &GpuContext, mut encoder: wgpu::CommandEncoder, buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: buffer.size(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, buffer.size());
    ctx.queue.submit([encoder.finish()]);
    approxifer_kernels::gpu::map_and_copy(ctx, &staging, len).unwrap()
}

/// Encode then decode through the recording API on `ctx`, into sentinel-filled buffers.
fn record_round_trip(codec: &GpuCodec, code: &Code, groups: usize, row_len: usize) {
    let ctx = codec.context();
    let (k, n, s) = (code.params().queries(), code.params().workers(), code.params().stragglers());
    let gpu_code = GpuCode::new(ctx, code).unwrap();
    let queries = random_f32(groups * k * row_len, 51);
    let (input, coded) = (storage(ctx, &queries), sentinel_buffer(ctx, groups * n * row_len));
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    codec
        .kernels()
        .record_encode(
            ctx,
            &mut encoder,
            &gpu_code,
            DeviceTensor::new(&input, Elem::F32, queries.len()),
            DeviceTensor::new(&coded, Elem::F32, groups * n * row_len),
            row_len,
        )
        .unwrap();
    let got = read(ctx, encoder, &coded, groups * n * row_len);
    assert!(!got.contains(&SENTINEL), "encode left elements unwritten");
    Tolerance::BALANCED
        .check(got.iter().map(|&v| f64::from(v)), f64s(&cpu::encode_to_vec(code, &queries, row_len).unwrap()))
        .unwrap();

    let masks = random_masks(groups, n, s, 52);
    let words: Vec<u32> = masks.iter().map(|&m| u32::from(m)).collect();
    let mask_buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: None,
        contents: bytemuck::cast_slice(&words),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let decoded = sentinel_buffer(ctx, groups * k * row_len);
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    codec
        .kernels()
        .record_decode(
            ctx,
            &mut encoder,
            &gpu_code,
            DeviceTensor::new(&coded, Elem::F32, groups * n * row_len),
            &mask_buffer,
            DeviceTensor::new(&decoded, Elem::F32, groups * k * row_len),
            row_len,
        )
        .unwrap();
    let got = read(ctx, encoder, &decoded, groups * k * row_len);
    assert!(!got.contains(&SENTINEL), "decode left elements unwritten");
    let coded_host = cpu::encode_to_vec(code, &queries, row_len).unwrap();
    Tolerance { relative: 1e-4, absolute: 1e-4 }
        .check(
            got.iter().map(|&v| f64::from(v)),
            f64s(&cpu::decode_to_vec(code, &coded_host, row_len, &masks).unwrap()),
        )
        .unwrap();
}

#[test]
fn every_element_is_written() {
    record_round_trip(codec(), &code(8, 10, 2), 37, 36);
    record_round_trip(codec(), &code(3, 5, 1), 11, 7);
}

#[test]
fn batches_over_the_binding_limit_are_chunked() {
    // A device whose storage bindings hold 4 KiB: 300 groups of 8 x 36 floats (1152 bytes a
    // group of queries) need dozens of dispatches, each at an aligned offset.
    let ctx = GpuContext::with_limits(&AdapterChoice::from_env(), |limits| {
        limits.max_storage_buffer_binding_size = 4096;
    })
    .expect("an adapter");
    let small = GpuCodec::new(ctx);
    record_round_trip(&small, &code(8, 10, 2), 300, 36);
    record_round_trip(&small, &code(3, 5, 1), 200, 7);

    // One group larger than a binding cannot be chunked: a clear error, not a crash.
    let e = small.encode(&code(8, 10, 2), &vec![0.0f32; 8 * 200], 200).unwrap_err();
    assert!(matches!(e, GpuError::GroupTooLarge { what: "queries", bytes: 6400, limit: 4096, .. }), "{e}");
}

// ---- errors -----------------------------------------------------------------------------------------

#[test]
fn shape_errors_match_the_cpu_path() {
    let gpu = codec();
    let c = code(2, 3, 1);
    let e = gpu.encode(&c, &[1.0f32; 7], 2).unwrap_err();
    assert!(matches!(e, GpuError::Codec(Error::NotWholeGroups { what: "queries", .. })), "{e}");
    let e = gpu.decode(&c, &[1.0f32; 6], 2, &[true, false, false]).unwrap_err();
    assert!(matches!(e, GpuError::Codec(Error::NotEnoughResponders { group: Some(0), .. })), "{e}");
    let e = gpu.decode(&c, &[1.0f32; 6], 0, &[true; 3]).unwrap_err();
    assert!(matches!(e, GpuError::Codec(Error::EmptyRows { .. })), "{e}");
}

#[test]
fn buffer_too_small() {
    let gpu = codec();
    let ctx = gpu.context();
    let c = code(2, 3, 0);
    let gpu_code = GpuCode::new(ctx, &c).unwrap();
    let input = storage(ctx, &[1.0; 8]);
    let output = sentinel_buffer(ctx, 4); // needs 12
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    let e = gpu
        .kernels()
        .record_encode(
            ctx,
            &mut encoder,
            &gpu_code,
            DeviceTensor::new(&input, Elem::F32, 8),
            DeviceTensor::new(&output, Elem::F32, 12),
            4,
        )
        .unwrap_err();
    assert!(matches!(e, GpuError::BufferTooSmall { what: "coded queries", needed: 48, available: 16, .. }), "{e}");
}

#[test]
fn no_adapter_names_what_was_asked_for() {
    let e = GpuContext::new(&AdapterChoice::Named("no such adapter 1234".into())).unwrap_err();
    assert!(matches!(e, GpuError::NoAdapter { .. }), "{e}");
    assert!(e.to_string().contains("no such adapter 1234"), "{e}");
}

#[test]
fn copy_kernel_copies_every_element() {
    let ctx = codec().context();
    for (len, row_len) in [(4096usize, 1024usize), (21, 7)] {
        let values = random_f32(len, 61);
        let (src, dst) = (storage(ctx, &values), sentinel_buffer(ctx, len));
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        codec()
            .kernels()
            .record_copy(
                ctx,
                &mut encoder,
                DeviceTensor::new(&src, Elem::F32, len),
                DeviceTensor::new(&dst, Elem::F32, len),
                row_len,
            )
            .unwrap();
        assert_eq!(read(ctx, encoder, &dst, len), values);
    }
}

#[test]
fn code_tables_over_the_uniform_limit_are_a_clear_error() {
    let ctx =
        GpuContext::with_limits(&AdapterChoice::from_env(), |limits| limits.max_uniform_buffer_binding_size = 256)
            .expect("an adapter");
    // The launch block is 32 bytes of params, then the 8 x 10 weights: 352 bytes.
    let e = GpuCode::new(&ctx, &code(8, 10, 2)).unwrap_err();
    assert!(
        matches!(e, GpuError::BufferTooLarge { what: "the code's tables (uniform)", bytes: 352, limit: 256, .. }),
        "{e}"
    );
    assert!(GpuCode::new(&ctx, &code(4, 6, 2)).is_ok(), "32 + 96 bytes fit");
    // And a code that fits runs correctly on that device.
    let (small, queries) = (code(4, 6, 2), (0..2 * 4 * 3).map(|i| i as f32 * 0.5).collect::<Vec<f32>>());
    let coded = approxifer_kernels::gpu::GpuCodec::new(ctx).encode(&small, &queries, 3).expect("encode");
    let mut expected = vec![0.0f32; 2 * 6 * 3];
    approxifer_kernels::cpu::encode(&small, &queries, 3, &mut expected).unwrap();
    assert!(coded.iter().zip(&expected).all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs().max(1.0)), "{coded:?}");
}
