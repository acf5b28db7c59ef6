//! The paper's locator: rational Berlekamp–Welch per output coordinate, then a vote.
//!
//! For coordinate `c` and the finite responders `F`, find `P` and `Q` of degree `K + A - 1`
//! with `Q(0) = 1` such that `P(beta_i) = y_i Q(beta_i)` in the least-squares sense. Were the
//! honest answers exactly a rational function of that type, `Q` would vanish at the liars'
//! nodes (the error-locator polynomial), so each coordinate's suspects are the `A` nodes of
//! smallest `|Q(beta_i)|`; the `A` workers most voted for over all coordinates are removed.
//!
//! Numerics (ALGORITHM.md asks for care): both polynomials are expanded in the Chebyshev
//! basis `T_k`, which is well conditioned on `[-1, 1]` where the nodes lie; `Q(0) = 1` is kept
//! by writing `Q = 1 + sum_k b_k (T_k(z) - T_k(0))`; each coordinate's values are scaled to
//! `max |y| = 1`; and the system, square when `S = 0`, is solved by an SVD pseudo-inverse (the
//! authors' `pinv`), which also gives the minimum-norm answer when it is singular.

use nalgebra::{DMatrix, DVector};

use crate::code::Code;

/// Singular values below this fraction of the largest are treated as zero (numpy's `pinv`
/// uses `1e-15`; the Chebyshev system's honest directions sit far above this).
const RCOND: f64 = 1e-12;

/// Up to `budget` suspects among `workers` (sorted, finite rows of `group`).
pub(super) fn suspects(code: &Code, group: &[f64], row_len: usize, workers: &[usize], budget: usize) -> Vec<usize> {
    let beta = code.beta();
    let x: Vec<f64> = workers.iter().map(|&w| beta[w]).collect();
    let degree = code.params().sources() + budget - 1;
    // Chebyshev values T_k(beta_i), k = 0..=degree, and T_k(0) = cos(k pi / 2).
    let t: Vec<Vec<f64>> = x.iter().map(|&z| chebyshev(z, degree)).collect();
    let t0 = chebyshev(0.0, degree);

    let m = workers.len();
    let mut votes = vec![0usize; m];
    // Tie-break: the sum over coordinates of |Q(beta_i)| relative to its median.
    let mut closeness = vec![0.0f64; m];
    for c in 0..row_len {
        let y: Vec<f64> = workers.iter().map(|&w| group[w * row_len + c]).collect();
        let Some(q) = locator_values(&y, &t, &t0, degree) else { continue };
        let magnitude: Vec<f64> = q.iter().map(|v| v.abs()).collect();
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| magnitude[a].total_cmp(&magnitude[b]).then(a.cmp(&b)));
        for &i in &order[..budget.min(m)] {
            votes[i] += 1;
        }
        let median = magnitude[order[m / 2]];
        if median > 0.0 {
            for (sum, v) in closeness.iter_mut().zip(&magnitude) {
                *sum += v / median;
            }
        }
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| votes[b].cmp(&votes[a]).then(closeness[a].total_cmp(&closeness[b])).then(a.cmp(&b)));
    let mut chosen: Vec<usize> = order[..budget.min(m)].iter().map(|&i| workers[i]).collect();
    chosen.sort_unstable();
    chosen
}

/// `Q(beta_i)` for one coordinate's values `y`, or `None` when the coordinate carries no
/// information (all zero) or the fit is not finite.
fn locator_values(y: &[f64], t: &[Vec<f64>], t0: &[f64], degree: usize) -> Option<Vec<f64>> {
    let scale = y.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if scale == 0.0 || !scale.is_finite() {
        return None;
    }
    let m = y.len();
    let p_terms = degree + 1;
    let columns = p_terms + degree;
    // Row i: [T_0..T_deg](beta_i) | -y_i [T_k(beta_i) - T_k(0)], k = 1..=deg ; right side y_i.
    let system = DMatrix::from_fn(m, columns, |i, col| {
        if col < p_terms { t[i][col] } else { -(y[i] / scale) * (t[i][col - degree] - t0[col - degree]) }
    });
    let rhs = DVector::from_iterator(m, y.iter().map(|v| v / scale));
    let svd = system.svd(true, true);
    let largest = svd.singular_values.max();
    let solution = svd.solve(&rhs, largest * RCOND).ok()?;
    let b = &solution.as_slice()[p_terms..];
    let q: Vec<f64> = t
        .iter()
        .map(|ti| 1.0 + b.iter().enumerate().map(|(k, bk)| bk * (ti[k + 1] - t0[k + 1])).sum::<f64>())
        .collect();
    q.iter().all(|v| v.is_finite()).then_some(q)
}

/// `T_0(z) ..= T_degree(z)` by the three-term recurrence.
fn chebyshev(z: f64, degree: usize) -> Vec<f64> {
    let mut t = Vec::with_capacity(degree + 1);
    t.push(1.0);
    if degree >= 1 {
        t.push(z);
    }
    for k in 2..=degree {
        t.push(2.0 * z * t[k - 1] - t[k - 2]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::chebyshev;

    #[test]
    fn chebyshev_recurrence_matches_cos_k_theta() {
        for &theta in &[0.0, 0.3, 1.1, 2.9, std::f64::consts::PI] {
            let t = chebyshev(f64::cos(theta), 12);
            for (k, v) in t.iter().enumerate() {
                assert!((v - (k as f64 * theta).cos()).abs() < 1e-12, "T_{k}(cos {theta})");
            }
        }
    }
}
