//! GPU kernel throughput on the adapter `AdapterChoice::from_env` picks (`APPROXIFER_ADAPTER`
//! overrides), next to the device's own buffer copy and a trivial WGSL copy kernel.
//!
//! Throughput counts bytes read plus bytes written. Each sample records its launches into one
//! command buffer, submits it and waits for the device, so the time is the device's. The
//! one-shot summary with Burn's matmul and the CPU path is `approxifer bench kernels`; this is
//! the criterion view of the same kernels. Run: `cargo bench --bench gpu_kernels`.

use std::time::{Duration, Instant};

use approxifer::kernels::gpu::{AdapterChoice, DeviceTensor, Elem, GpuCode, GpuContext, Kernels, wgpu};
use approxifer::kernels::{Code, CodeParams};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn storage(ctx: &GpuContext, bytes: usize) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench"),
        size: bytes as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Times `iters` launches recorded into one submission, the device waited on.
fn device_time(ctx: &GpuContext, iters: u64, mut record: impl FnMut(&mut wgpu::CommandEncoder)) -> Duration {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    for _ in 0..iters {
        record(&mut encoder);
    }
    let start = Instant::now();
    ctx.queue.submit([encoder.finish()]);
    ctx.wait().expect("the device finishes");
    start.elapsed()
}

fn kernels(c: &mut Criterion) {
    let ctx = match GpuContext::new(&AdapterChoice::from_env()) {
        Ok(ctx) => ctx,
        Err(e) => panic!("gpu_kernels needs an adapter (scripts/setup.sh installs lavapipe): {e}"),
    };
    let kernels = Kernels::new();
    let (k, n, row_len, input_mib) = (8, 10, 4096, 50);
    let code = Code::new(CodeParams::builder(k, n).stragglers(1).build().unwrap()).unwrap();
    let gpu_code = GpuCode::new(&ctx, &code).unwrap();
    let groups = (input_mib << 20) / (4 * k * row_len);
    let (in_len, out_len) = (groups * k * row_len, groups * n * row_len);
    let (queries, coded, copy) = (storage(&ctx, 4 * in_len), storage(&ctx, 4 * out_len), storage(&ctx, 4 * in_len));

    let mut group = c.benchmark_group(format!("gpu K={k} N={n} {input_mib} MiB in, {}", ctx.adapter_name()));
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(8 * in_len as u64));
    group.bench_function("copy_buffer_to_buffer", |b| {
        b.iter_custom(|iters| {
            device_time(&ctx, iters, |e| e.copy_buffer_to_buffer(&queries, 0, &copy, 0, 4 * in_len as u64))
        })
    });
    group.bench_function("copy kernel", |b| {
        b.iter_custom(|iters| {
            device_time(&ctx, iters, |e| {
                let (src, dst) =
                    (DeviceTensor::new(&queries, Elem::F32, in_len), DeviceTensor::new(&copy, Elem::F32, in_len));
                kernels.record_copy(&ctx, e, src, dst, row_len).unwrap()
            })
        })
    });
    group.throughput(Throughput::Bytes(4 * (in_len + out_len) as u64));
    group.bench_function("encode f32", |b| {
        b.iter_custom(|iters| {
            device_time(&ctx, iters, |e| {
                let (q, o) =
                    (DeviceTensor::new(&queries, Elem::F32, in_len), DeviceTensor::new(&coded, Elem::F32, out_len));
                kernels.record_encode(&ctx, e, &gpu_code, q, o, row_len).unwrap()
            })
        })
    });
    group.finish();

    // Decode of 10-class predictions, one straggler per group (rotating), as served.
    let (decode_groups, classes) = (100_000, 10);
    let outputs = storage(&ctx, 4 * decode_groups * n * classes);
    let decoded = storage(&ctx, 4 * decode_groups * k * classes);
    let masks: Vec<u32> = (0..decode_groups * n).map(|i| u32::from(i % n != (i / n) % n)).collect();
    let masks = wgpu::util::DeviceExt::create_buffer_init(
        &ctx.device,
        &wgpu::util::BufferInitDescriptor {
            label: Some("masks"),
            contents: bytemuck::cast_slice(&masks),
            usage: wgpu::BufferUsages::STORAGE,
        },
    );
    let mut group = c.benchmark_group(format!("gpu decode {decode_groups} groups x {classes} classes"));
    group
        .sample_size(10)
        .throughput(Throughput::Bytes(4 * (decode_groups * ((n - 1) * classes + n + k * classes)) as u64));
    group.bench_function("decode f32", |b| {
        b.iter_custom(|iters| {
            device_time(&ctx, iters, |e| {
                let o = DeviceTensor::new(&outputs, Elem::F32, decode_groups * n * classes);
                let d = DeviceTensor::new(&decoded, Elem::F32, decode_groups * k * classes);
                kernels.record_decode(&ctx, e, &gpu_code, o, &masks, d, classes).unwrap()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
