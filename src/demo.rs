//! A CPU demonstration of coded inference on a smooth model with stragglers.
//!
//! The model is a fixed random two-layer `tanh` network: smooth, nonlinear, and cheap enough
//! to run thousands of groups on the CPU. Each trial encodes random queries, runs the network
//! on every coded query (the "workers"), drops `S` random workers per group, decodes, and
//! compares with the network's answers on the uncoded queries.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use crate::kernels::{Code, CodeParams, Result, cpu};

/// `f(x) = W2 tanh(W1 x + b1) + b2`, with weights drawn once from a seed.
#[derive(Clone, Debug)]
pub struct TwoLayerNet {
    input: usize,
    hidden: usize,
    classes: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl TwoLayerNet {
    /// Weights uniform in `±sqrt(3 / fan_in)` (unit variance pre-activations for unit inputs).
    pub fn random(input: usize, hidden: usize, classes: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut draw = |count: usize, fan_in: usize| -> Vec<f32> {
            let scale = (3.0 / fan_in as f32).sqrt();
            (0..count).map(|_| rng.random_range(-scale..scale)).collect()
        };
        let (w1, b1) = (draw(hidden * input, input), draw(hidden, input));
        let (w2, b2) = (draw(classes * hidden, hidden), draw(classes, hidden));
        TwoLayerNet { input, hidden, classes, w1, b1, w2, b2 }
    }

    /// Input width `D`.
    pub fn input(&self) -> usize {
        self.input
    }

    /// Output width `C`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// # Shapes
    /// `rows`: `[R, D]` row-major -> `[R, C]`.
    pub fn forward(&self, rows: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; rows.len() / self.input * self.classes];
        out.par_chunks_exact_mut(self.classes).zip(rows.par_chunks_exact(self.input)).for_each(|(y, x)| {
            let hidden: Vec<f32> = (0..self.hidden)
                .map(|h| (dot(&self.w1[h * self.input..][..self.input], x) + self.b1[h]).tanh())
                .collect();
            for (c, y) in y.iter_mut().enumerate() {
                *y = dot(&self.w2[c * self.hidden..][..self.hidden], &hidden) + self.b2[c];
            }
        });
        out
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

/// How well one code recovered the network's outputs.
#[derive(Clone, Debug, Serialize)]
pub struct TrialReport {
    pub k: usize,
    pub n: usize,
    pub stragglers: usize,
    pub groups: usize,
    /// `||decoded - f(X)|| / ||f(X)||` over all decoded outputs (Frobenius norms).
    pub relative_error: f64,
    /// Fraction of queries whose decoded argmax equals the uncoded argmax.
    pub label_agreement: f64,
}

/// Runs `groups` groups through `params` with exactly `S` random stragglers per group.
pub fn run_trial(net: &TwoLayerNet, params: CodeParams, groups: usize, seed: u64) -> Result<TrialReport> {
    let code = Code::new(params)?;
    let (k, n, s) = (params.queries(), params.workers(), params.stragglers());
    let mut rng = StdRng::seed_from_u64(seed);
    let queries: Vec<f32> = (0..groups * k * net.input()).map(|_| rng.random_range(-1.0..1.0)).collect();
    let truth = net.forward(&queries);
    let coded = cpu::encode_to_vec(&code, &queries, net.input())?;
    let worker_outputs = net.forward(&coded);
    let mut masks = vec![true; groups * n];
    for mask in masks.chunks_exact_mut(n) {
        for straggler in rand::seq::index::sample(&mut rng, n, s) {
            mask[straggler] = false;
        }
    }
    let decoded = cpu::decode_to_vec(&code, &worker_outputs, net.classes(), &masks)?;

    let (mut err2, mut norm2) = (0.0f64, 0.0f64);
    for (d, t) in decoded.iter().zip(&truth) {
        err2 += f64::from(d - t).powi(2);
        norm2 += f64::from(*t).powi(2);
    }
    let c = net.classes();
    let agree = decoded.chunks_exact(c).zip(truth.chunks_exact(c)).filter(|(d, t)| argmax(d) == argmax(t)).count();
    Ok(TrialReport {
        k,
        n,
        stragglers: s,
        groups,
        relative_error: (err2 / norm2.max(f64::MIN_POSITIVE)).sqrt(),
        label_agreement: agree as f64 / (groups * k).max(1) as f64,
    })
}

/// Index of the largest value (first on ties; NaN never wins).
pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}
