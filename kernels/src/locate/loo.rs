//! Leave-one-out Berrut predictions: how far each responder's row is from what the other
//! responders' rows interpolate at its node. Both of our locators measure consistency by it.
//!
//! For responders `0..m` (nodes decreasing) and row `i`, the Berrut interpolant of the others
//! at `beta_i` is `sum_l T_il y_l / sum_l T_il` with `T_il = (-1)^{p(l)} / (beta_i - beta_l)`,
//! `p(l)` being `l`'s position among the others. Removing responder `c` as well drops its
//! term and flips the sign of every `T_il` with `l > c` (their positions shift by one), so
//! with prefix sums over `l` every row's prediction *without `c`* costs `O(row_len)`: a
//! locator can try removing each of several suspects for the price of one pass. The prefix
//! sums are made only when asked for (most groups need no second look).

use std::borrow::Cow;

/// One responder set's leave-one-out predictions, with the prefix sums that remove one more
/// responder made on first use.
pub(super) struct LeaveOneOut<'a> {
    rows: Vec<&'a [f64]>,
    row_len: usize,
    terms: Cow<'a, Terms>,
    prefix: std::cell::OnceCell<Prefix>,
}

/// The interpolation terms of one responder set, which depend on its nodes alone: a caller
/// that meets the same set again (every worker answering, the common case) keeps them.
#[derive(Clone, Debug)]
pub(super) struct Terms {
    /// `[m, m]`: `T_il`, zero on the diagonal.
    terms: Vec<f64>,
    /// `[m]`: `sum_l T_il^2`.
    squares: Vec<f64>,
}

impl Terms {
    /// The terms of `m` responders in node order (decreasing node values), with
    /// `inverse(a, b) = 1 / (beta_a - beta_b)` for their indices among them.
    pub(super) fn new(m: usize, inverse: impl Fn(usize, usize) -> f64) -> Self {
        let mut terms = vec![0.0; m * m];
        let mut squares = vec![0.0; m];
        for i in 0..m {
            for l in (0..m).filter(|&l| l != i) {
                let position = if l < i { l } else { l - 1 };
                let term = if position % 2 == 0 { 1.0 } else { -1.0 } * inverse(i, l);
                terms[i * m + l] = term;
                squares[i] += term * term;
            }
        }
        Terms { terms, squares }
    }
}

/// Prefix sums over `l` of every row's terms.
struct Prefix {
    /// `[m, m + 1, row_len]`: `sum_{l < c} T_il y_l`.
    numerators: Vec<f64>,
    /// `[m, m + 1]`: `sum_{l < c} T_il`.
    denominators: Vec<f64>,
}

impl<'a> LeaveOneOut<'a> {
    /// `rows` are the responders' rows in node order (decreasing node values) and
    /// `inverse(a, b) = 1 / (beta_a - beta_b)` for their indices in `rows` (a table lookup
    /// where the caller has one: a division per pair is a good part of a pass). At least two
    /// rows.
    pub(super) fn new(rows: Vec<&'a [f64]>, inverse: impl Fn(usize, usize) -> f64) -> Self {
        let terms = Terms::new(rows.len(), inverse);
        Self::with_terms(rows, Cow::Owned(terms))
    }

    /// As [`Self::new`], with the set's [`Terms`] made before (for `rows.len()` responders).
    pub(super) fn with_terms(rows: Vec<&'a [f64]>, terms: Cow<'a, Terms>) -> Self {
        let row_len = rows[0].len();
        LeaveOneOut { rows, row_len, terms, prefix: std::cell::OnceCell::new() }
    }

    fn prefix(&self) -> &Prefix {
        self.prefix.get_or_init(|| {
            let (m, row_len) = (self.rows.len(), self.row_len);
            let mut numerators = vec![0.0; m * (m + 1) * row_len];
            let mut denominators = vec![0.0; m * (m + 1)];
            for i in 0..m {
                let numerator = &mut numerators[i * (m + 1) * row_len..(i + 1) * (m + 1) * row_len];
                for l in 0..m {
                    let term = self.terms.terms[i * m + l];
                    denominators[i * (m + 1) + l + 1] = denominators[i * (m + 1) + l] + term;
                    let (before, after) = numerator.split_at_mut((l + 1) * row_len);
                    let previous = &before[l * row_len..];
                    for ((next, prev), y) in after[..row_len].iter_mut().zip(previous).zip(self.rows[l]) {
                        *next = prev + term * y;
                    }
                }
            }
            Prefix { numerators, denominators }
        })
    }

    /// Every row's residual `(y_i - prediction_i) / sqrt(1 + sum_l w_l^2)` against all the
    /// others, `[m, row_len]`. The divisor (`w` the normalised Berrut weights) is the
    /// residual's standard deviation for unit independent noise on every row: it puts end
    /// nodes, whose predictions extrapolate with large weights, on the same footing as
    /// interior ones.
    pub(super) fn residuals(&self) -> Vec<f64> {
        let (m, row_len) = (self.rows.len(), self.row_len);
        let mut out = vec![0.0; m * row_len];
        let mut numerator = vec![0.0; row_len];
        for (i, residual) in out.chunks_exact_mut(row_len).enumerate() {
            numerator.fill(0.0);
            let terms = &self.terms.terms[i * m..(i + 1) * m];
            for (term, row) in terms.iter().zip(&self.rows) {
                numerator.iter_mut().zip(*row).for_each(|(acc, y)| *acc += term * y);
            }
            let denominator: f64 = terms.iter().sum();
            self.residual(i, |k| numerator[k], denominator, self.terms.squares[i], residual);
        }
        out
    }

    /// Row `i`'s residual against the others but `c` (`i != c`) into `out`. At least three
    /// rows. One row at a time, so that a caller judging a removal can stop early.
    pub(super) fn residual_without(&self, c: usize, i: usize, out: &mut [f64]) {
        let m = self.rows.len();
        let prefix = self.prefix();
        // Terms before c keep their sign, terms after c flip, c's own goes.
        let numerator = |c| self.numerator(prefix, i, c);
        let (before, through, all) = (numerator(c), numerator(c + 1), numerator(m));
        let d = &prefix.denominators[i * (m + 1)..(i + 1) * (m + 1)];
        let denominator = d[c] - (d[m] - d[c + 1]);
        let squares = self.terms.squares[i] - self.terms.terms[i * m + c].powi(2);
        self.residual(i, |k| before[k] - (all[k] - through[k]), denominator, squares, out);
    }

    /// `sum_{l < c} T_il y_l`.
    fn numerator<'p>(&self, prefix: &'p Prefix, i: usize, c: usize) -> &'p [f64] {
        let m = self.rows.len();
        let start = (i * (m + 1) + c) * self.row_len;
        &prefix.numerators[start..start + self.row_len]
    }

    fn residual(&self, i: usize, numerator: impl Fn(usize) -> f64, denominator: f64, squares: f64, out: &mut [f64]) {
        scaled_residual(self.rows[i], numerator, denominator, squares, out);
    }
}

/// `(y - numerator / denominator) / sqrt(1 + squares / denominator^2)` per value of `y`: a
/// row's residual against a Berrut prediction with terms summing to `denominator` and squares
/// to `squares`, on the scale of unit independent noise.
fn scaled_residual(y: &[f64], numerator: impl Fn(usize) -> f64, denominator: f64, squares: f64, out: &mut [f64]) {
    let gain = (1.0 + squares / (denominator * denominator)).sqrt();
    for (k, (r, y)) in out.iter_mut().zip(y).enumerate() {
        *r = (y - numerator(k) / denominator) / gain;
    }
}

/// The residual of `target` against the Berrut interpolant of `others` (in node order,
/// `target` not among them), as [`LeaveOneOut::residuals`] scales it, into `out`;
/// `inverse(l) = 1 / (beta_target - beta_l)` for `others`' `l`-th. One prediction, where a
/// [`LeaveOneOut`] pass makes one per row.
pub(super) fn residual_against(target: &[f64], others: &[&[f64]], inverse: impl Fn(usize) -> f64, out: &mut [f64]) {
    let mut numerator = vec![0.0; target.len()];
    let (mut denominator, mut squares) = (0.0, 0.0);
    for (l, row) in others.iter().enumerate() {
        let term = if l % 2 == 0 { 1.0 } else { -1.0 } * inverse(l);
        denominator += term;
        squares += term * term;
        numerator.iter_mut().zip(*row).for_each(|(acc, y)| *acc += term * y);
    }
    scaled_residual(target, |k| numerator[k], denominator, squares, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The residual of row `i` computed directly from the definition.
    fn direct(rows: &[Vec<f64>], nodes: &[f64], i: usize) -> Vec<f64> {
        let others: Vec<usize> = (0..rows.len()).filter(|&l| l != i).collect();
        let w: Vec<f64> = others
            .iter()
            .enumerate()
            .map(|(p, &l)| if p % 2 == 0 { 1.0 } else { -1.0 } / (nodes[i] - nodes[l]))
            .collect();
        let total: f64 = w.iter().sum();
        let gain = (1.0 + w.iter().map(|v| (v / total).powi(2)).sum::<f64>()).sqrt();
        (0..rows[i].len())
            .map(|k| {
                let prediction: f64 = others.iter().zip(&w).map(|(&l, wl)| wl * rows[l][k]).sum::<f64>() / total;
                (rows[i][k] - prediction) / gain
            })
            .collect()
    }

    #[test]
    fn prefix_sums_and_single_predictions_match_the_definition_with_and_without_each_row() {
        let nodes: Vec<f64> = (0..9).map(|i| (i as f64 * std::f64::consts::PI / 9.0).cos()).collect();
        let rows: Vec<Vec<f64>> =
            (0..9).map(|i| (0..3).map(|k| ((i * 7 + k * 3) % 11) as f64 - 4.0).collect()).collect();
        let loo = LeaveOneOut::new(rows.iter().map(Vec::as_slice).collect(), |a, b| 1.0 / (nodes[a] - nodes[b]));
        let all = loo.residuals();
        for i in 0..9 {
            for (a, b) in all[i * 3..(i + 1) * 3].iter().zip(direct(&rows, &nodes, i)) {
                assert!((a - b).abs() < 1e-12, "row {i}: {a} vs {b}");
            }
        }
        for i in 0..9 {
            let others: Vec<usize> = (0..9).filter(|&l| l != i).collect();
            let rows_of: Vec<&[f64]> = others.iter().map(|&l| rows[l].as_slice()).collect();
            let mut one = vec![0.0; 3];
            residual_against(&rows[i], &rows_of, |l| 1.0 / (nodes[i] - nodes[others[l]]), &mut one);
            for (a, b) in one.iter().zip(direct(&rows, &nodes, i)) {
                assert!((a - b).abs() < 1e-12, "row {i} alone: {a} vs {b}");
            }
        }
        for c in 0..9 {
            let keep: Vec<usize> = (0..9).filter(|&i| i != c).collect();
            let rest: Vec<Vec<f64>> = keep.iter().map(|&i| rows[i].clone()).collect();
            let rest_nodes: Vec<f64> = keep.iter().map(|&i| nodes[i]).collect();
            for (j, i) in keep.iter().copied().enumerate() {
                let mut without = vec![0.0; 3];
                loo.residual_without(c, i, &mut without);
                for (a, b) in without.iter().zip(direct(&rest, &rest_nodes, j)) {
                    assert!((a - b).abs() < 1e-9, "without {c}, row {j}: {a} vs {b}");
                }
            }
        }
    }
}
