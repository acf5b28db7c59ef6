//! CPU reference path throughput, next to a two-thread memcpy of the same bytes.
//!
//! Throughput counts bytes read plus bytes written. The codec runs on a two-thread rayon pool
//! so that it is compared with the memcpy on equal terms; the target is encode at >= 70% of
//! the memcpy rate for large rows. Run: `cargo bench --bench cpu_codec`.

use std::hint::black_box;

use approxifer::kernels::{Code, CodeParams, cpu};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;

const THREADS: usize = 2;

fn pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().expect("a rayon pool")
}

/// Copies `src` into `dst` with one thread per half.
fn memcpy_two_threads<T: Copy + Send + Sync>(src: &[T], dst: &mut [T]) {
    let mid = src.len() / 2;
    let (src_a, src_b) = src.split_at(mid);
    let (dst_a, dst_b) = dst.split_at_mut(mid);
    std::thread::scope(|s| {
        s.spawn(|| dst_a.copy_from_slice(src_a));
        dst_b.copy_from_slice(src_b);
    });
}

/// Encoding rows of 64 Ki floats, at a size that fits a large last-level cache and at one
/// that does not (where outputs are written with streaming stores, as memcpy does).
fn encode_large_rows(c: &mut Criterion) {
    let (k, n, row_len) = (8, 10, 1 << 16);
    let code = Code::new(CodeParams::builder(k, n).stragglers(2).build().unwrap()).unwrap();
    let pool = pool();
    for groups in [16, 256] {
        let queries: Vec<f32> = (0..groups * k * row_len).map(|i| (i % 251) as f32 * 0.01).collect();
        let mut coded = vec![0.0f32; groups * n * row_len];
        let bytes = ((queries.len() + coded.len()) * 4) as u64;
        let mut group =
            c.benchmark_group(format!("cpu encode K={k} N={n} D={row_len} B={groups} ({} MiB moved)", bytes >> 20));
        group.sample_size(10).throughput(Throughput::Bytes(bytes));
        let copy_len = (queries.len() + coded.len()) / 2;
        let (src, mut dst) = (vec![1.0f32; copy_len], vec![0.0f32; copy_len]);
        group.bench_function("memcpy 2 threads", |b| b.iter(|| memcpy_two_threads(black_box(&src), &mut dst)));
        group.bench_function("encode f32", |b| {
            b.iter(|| pool.install(|| cpu::encode(&code, black_box(&queries), row_len, &mut coded).unwrap()))
        });
        if groups == 16 {
            let queries16: Vec<f16> = queries.iter().map(|&v| f16::from_f32(v)).collect();
            let mut coded16 = vec![f16::ZERO; coded.len()];
            group.throughput(Throughput::Bytes(bytes / 2));
            group.bench_function("encode f16", |b| {
                b.iter(|| pool.install(|| cpu::encode(&code, black_box(&queries16), row_len, &mut coded16).unwrap()))
            });
        }
        group.finish();
    }
}

fn decode_many_groups(c: &mut Criterion) {
    // 100k groups of 10-class outputs, one straggler each, as after a classifier.
    let (k, n, groups, classes) = (8, 9, 100_000, 10);
    let code = Code::new(CodeParams::builder(k, n).stragglers(1).build().unwrap()).unwrap();
    let outputs: Vec<f32> = (0..groups * n * classes).map(|i| (i % 97) as f32 * 0.1).collect();
    let masks: Vec<bool> = (0..groups * n).map(|i| i % n != (i / n) % n).collect();
    let mut decoded = vec![0.0f32; groups * k * classes];
    let bytes = ((groups * (n - 1) * classes + decoded.len()) * 4) as u64;
    let pool = pool();

    let mut group = c.benchmark_group(format!("cpu K={k} N={n} B={groups} C={classes}"));
    group.sample_size(10).throughput(Throughput::Bytes(bytes));
    group.bench_function("decode f32", |b| {
        b.iter(|| pool.install(|| cpu::decode(&code, black_box(&outputs), classes, &masks, &mut decoded).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, encode_large_rows, decode_many_groups);
criterion_main!(benches);
