//! An independent, deliberately naive implementation of ALGORITHM.md, written from the
//! specification alone and sharing no code with the crate: node values from plain `cos`,
//! differences by plain subtraction, nodes explicitly sorted, coincidences by tolerance.
//! The crate is tested against it.

#![allow(dead_code)]

use std::f64::consts::PI;

/// `cos((2j+1) pi / (2K))`, the data nodes.
pub fn chebyshev1(count: usize) -> Vec<f64> {
    (0..count).map(|j| ((2 * j + 1) as f64 * PI / (2 * count) as f64).cos()).collect()
}

/// Worker nodes of a family named as on the command line.
pub fn worker_nodes(family: &str, count: usize) -> Vec<f64> {
    match family {
        "chebyshev2" => (0..count).map(|n| (n as f64 * PI / (count - 1) as f64).cos()).collect(),
        "chebyshev1" => chebyshev1(count),
        "authors" => (0..count).map(|n| (n as f64 * PI / count as f64).cos()).collect(),
        other => panic!("unknown family {other}"),
    }
}

/// Berrut's first-form weights of `x` over `nodes` given in *any* order: the sign of each
/// node is `(-1)^(its position when the nodes are sorted in decreasing order)`.
pub fn berrut(x: f64, nodes: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by(|&a, &b| nodes[b].partial_cmp(&nodes[a]).unwrap());
    let mut w = vec![0.0; nodes.len()];
    if let Some(hit) = nodes.iter().position(|z| (x - z).abs() < 1e-13) {
        w[hit] = 1.0;
        return w;
    }
    for (position, &i) in order.iter().enumerate() {
        let sign = if position % 2 == 0 { 1.0 } else { -1.0 };
        w[i] = sign / (x - nodes[i]);
    }
    let total: f64 = w.iter().sum();
    w.iter().map(|v| v / total).collect()
}

/// `N x K`: row n holds the weights of the data nodes at `beta[n]`.
pub fn encode_matrix(alpha: &[f64], beta: &[f64]) -> Vec<Vec<f64>> {
    beta.iter().map(|&b| berrut(b, alpha)).collect()
}

/// `K x |F|`: row j holds the weights of the responders' nodes at `alpha[j]`.
pub fn decode_matrix(alpha: &[f64], beta: &[f64], responders: &[usize]) -> Vec<Vec<f64>> {
    let nodes: Vec<f64> = responders.iter().map(|&i| beta[i]).collect();
    alpha.iter().map(|&a| berrut(a, &nodes)).collect()
}

/// `out[r] = sum_c m[r][c] * rows[c]` in `f64`.
pub fn apply(m: &[Vec<f64>], rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    m.iter()
        .map(|weights| {
            let mut out = vec![0.0; rows.first().map_or(0, Vec::len)];
            for (w, row) in weights.iter().zip(rows) {
                for (o, v) in out.iter_mut().zip(row) {
                    *o += w * v;
                }
            }
            out
        })
        .collect()
}

/// Largest absolute difference between two matrices of the same shape.
pub fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row lengths differ");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}
