//! Byzantine location cost: 10,000 groups of `K = 12` queries, `A = 3`, `N = 2K + 2A - 1 = 29`,
//! 10 outputs, on two threads: honest groups, and groups with three liars each, liars that
//! only their neighbours give away (sign flips of outputs symmetric about zero: every locator
//! re-scores to its full depth) and liars whose own rows do (scaled tenfold). Issue 14's
//! target: <= 0.1 s for the default locator.
//! Run: `cargo bench --bench locate`.

use std::hint::black_box;
use std::sync::Arc;

use approxifer::kernels::locate::calibrated::DEFAULT_FALSE_ALARM;
use approxifer::kernels::{CalibrationBuilder, Code, CodeParams, Locator, NodeFamily, cpu, locate};
use criterion::{Criterion, criterion_group, criterion_main};

const THREADS: usize = 2;
const K: usize = 12;
const A: usize = 3;
const CLASSES: usize = 10;
const DIM: usize = 16;

/// Honest answers of a smooth nonlinear model (`5 tanh(W x)`) to the coded queries of
/// `groups` groups of random queries: `[groups, N, CLASSES]`.
fn honest(code: &Code, groups: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let weights: Vec<f32> = {
        let mut fixed = 0x9e3779b97f4a7c15u64;
        (0..CLASSES * DIM)
            .map(|_| {
                fixed ^= fixed << 13;
                fixed ^= fixed >> 7;
                fixed ^= fixed << 17;
                (fixed >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
            })
            .collect()
    };
    let queries: Vec<f32> = (0..groups * K * DIM).map(|_| uniform()).collect();
    let coded = cpu::encode_to_vec(code, &queries, DIM).expect("encode");
    coded
        .chunks_exact(DIM)
        .flat_map(|x| {
            weights.chunks_exact(DIM).map(move |w| 5.0 * w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>().tanh())
        })
        .collect()
}

fn locate_10k_groups(c: &mut Criterion) {
    let n = CodeParams::workers_needed(K, 0, A);
    let code = Code::new(CodeParams::builder(K, n).byzantine(A).nodes(NodeFamily::Authors).build().unwrap()).unwrap();
    let groups = 10_000;
    let mut builder = CalibrationBuilder::new(&code, CLASSES, usize::MAX).unwrap();
    let calibration_groups = 2000;
    builder.observe(&honest(&code, calibration_groups, 1), &vec![true; calibration_groups * n]).unwrap();
    let calibrated = Locator::Calibrated(Arc::new(builder.fit(DEFAULT_FALSE_ALARM).unwrap()));
    let clean = honest(&code, groups, 2);
    let attacked = |lie: fn(&mut f32)| {
        let mut answers = clean.clone();
        for (g, group) in answers.chunks_exact_mut(n * CLASSES).enumerate() {
            for liar in [g % n, (g + 7) % n, (g + 17) % n] {
                group[liar * CLASSES..(liar + 1) * CLASSES].iter_mut().for_each(lie);
            }
        }
        answers
    };
    // The model's outputs are symmetric about zero, so a sign-flipped row looks like an honest
    // one on its own and only its disagreement with the others gives it away: every locator
    // re-scores to its full depth. A row scaled tenfold is atypical on its own.
    let flipped = attacked(|v| *v = -*v);
    let scaled = attacked(|v| *v *= 10.0);
    let masks = vec![true; groups * n];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(THREADS).build().expect("a rayon pool");
    let mut group = c.benchmark_group(format!("locate K={K} A={A} N={n} C={CLASSES} B={groups}"));
    group.sample_size(10);
    let cases =
        [("no liars", &clean), ("3 sign-flipping liars per group", &flipped), ("3 scaling liars per group", &scaled)];
    for (liars, answers) in cases {
        for locator in [&calibrated, &Locator::Robust] {
            group.bench_function(format!("{}, {liars}", locator.name()), |b| {
                b.iter(|| pool.install(|| locate(&code, locator, black_box(answers), CLASSES, &masks).unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, locate_10k_groups);
criterion_main!(benches);
