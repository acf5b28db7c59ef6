//! Leave-one-out Berrut predictions: how far each responder's row is from what the other
//! responders' rows interpolate at its node. Both of our locators measure consistency by it.
//!
//! For responders `0..m` (nodes decreasing) and row `i`, the Berrut interpolant of the others
//! at `beta_i` is `sum_l T_il y_l / sum_l T_il` with `T_il = (-1)^{p(l)} / (beta_i - beta_l)`,
//! `p(l)` being `l`'s position among the others. Removing responder `c` as well drops its
//! term and flips the sign of every `T_il` with `l > c` (their positions shift by one). So
//! from a pass's sums `N_i = sum_l T_il y_l`, row `i`'s prediction *without `c`* needs only the
//! terms on the shorter side of `c`: `2 sum_{l<c} - N_i + T_ic y_c`, or `N_i - 2 sum_{l>c} -
//! T_ic y_c`. A locator tries removing each of a few suspects for about a quarter of a pass
//! each, and the removal it keeps leaves the next pass's sums behind.

use std::borrow::Cow;

use nalgebra::{DMatrixView, DMatrixViewMut};

/// One responder set's leave-one-out predictions: its rows, their terms and the pass's sums.
pub(super) struct LeaveOneOut<'a> {
    rows: Vec<&'a [f64]>,
    row_len: usize,
    terms: Cow<'a, Terms>,
    sums: Sums,
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
        for i in 0..m {
            for l in (0..m).filter(|&l| l != i) {
                let position = if l < i { l } else { l - 1 };
                terms[i * m + l] = if position % 2 == 0 { 1.0 } else { -1.0 } * inverse(i, l);
            }
        }
        Self::with_squares(m, terms)
    }

    /// The terms of the same set without its `c`-th responder: its row and column go and the
    /// terms after it flip sign (no division, the same terms as [`Terms::new`] makes). The
    /// squares lose `c`'s, as [`LeaveOneOut::residual_without`] computes them, so that a
    /// removal's trial and the next pass agree to the last bit.
    fn without(&self, c: usize) -> Terms {
        let m = self.squares.len();
        let (mut terms, mut squares) = (Vec::with_capacity((m - 1) * (m - 1)), Vec::with_capacity(m - 1));
        for (i, (row, square)) in self.terms.chunks_exact(m).zip(&self.squares).enumerate() {
            if i == c {
                continue;
            }
            terms.extend_from_slice(&row[..c]);
            terms.extend(row[c + 1..].iter().map(|t| -t));
            squares.push(square - row[c] * row[c]);
        }
        Terms { terms, squares }
    }

    fn with_squares(m: usize, terms: Vec<f64>) -> Terms {
        let squares = terms.chunks_exact(m).map(|row| row.iter().map(|t| t * t).sum()).collect();
        Terms { terms, squares }
    }

    fn row(&self, i: usize) -> &[f64] {
        let m = self.squares.len();
        &self.terms[i * m..(i + 1) * m]
    }
}

/// Every row's Berrut prediction from the others before its division: what a pass computes
/// and a removal updates.
#[derive(Clone, Debug, Default)]
pub(super) struct Sums {
    /// `[m, row_len]`: `sum_l T_il y_l`.
    pub(super) numerators: Vec<f64>,
    /// `[m]`: `sum_l T_il`.
    pub(super) denominators: Vec<f64>,
}

impl Sums {
    /// Room for `m` rows of `row_len` values (contents unspecified).
    pub(super) fn resize(&mut self, m: usize, row_len: usize) {
        self.numerators.resize(m * row_len, 0.0);
        self.denominators.resize(m, 0.0);
    }
}

/// The buffers of passes done with, for the next passes to take: locating one group makes
/// several passes over it, each with buffers of a few kilobytes (past what the allocator keeps
/// per thread for quick reuse). Allocating and freeing took about 6 % of the samples of a
/// profiled run locating the sign flips of `cargo bench --bench locate` (set-up included),
/// 4 % with them kept.
#[derive(Debug, Default)]
pub(super) struct Pool {
    sums: Vec<Sums>,
    vectors: Vec<Vec<f64>>,
}

impl Pool {
    /// Sums given back before, or new ones (contents unspecified: [`Sums::resize`] them).
    pub(super) fn sums(&mut self) -> Sums {
        self.sums.pop().unwrap_or_default()
    }

    /// An empty vector, with the room of one given back before where there is one.
    pub(super) fn vector(&mut self) -> Vec<f64> {
        let mut vector = self.vectors.pop().unwrap_or_default();
        vector.clear();
        vector
    }

    pub(super) fn give_sums(&mut self, sums: Sums) {
        self.sums.push(sums);
    }

    pub(super) fn give_vector(&mut self, vector: Vec<f64>) {
        self.vectors.push(vector);
    }
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
        let (m, row_len) = (rows.len(), rows[0].len());
        let values: Vec<f64> = rows.iter().flat_map(|row| row.iter().copied()).collect();
        // The numerators are the product `T Y` (`[m, m] x [m, row_len]`, row-major); in
        // nalgebra's column-major terms, `N^T = Y^T T^T` over the same buffers. A matrix
        // product, blocked and vectorised, where sums row by row wait on every addition.
        let mut numerators = vec![0.0; m * row_len];
        let values_t = DMatrixView::from_slice(&values, row_len, m);
        let terms_t = DMatrixView::from_slice(&terms.terms, m, m);
        DMatrixViewMut::from_slice(&mut numerators, row_len, m).gemm(1.0, &values_t, &terms_t, 0.0);
        let denominators = terms.terms.chunks_exact(m).map(|row| row.iter().sum()).collect();
        LeaveOneOut { rows, row_len, terms, sums: Sums { numerators, denominators } }
    }

    /// The same set without its `c`-th row, from the `sums` that [`Self::residual_without`]
    /// left for every other row (with `c`), or from a new pass (without).
    pub(super) fn without(&self, c: usize, sums: Option<Sums>) -> LeaveOneOut<'a> {
        let mut rows = self.rows.clone();
        rows.remove(c);
        let terms = Cow::Owned(self.terms.without(c));
        match sums {
            Some(sums) => LeaveOneOut { rows, row_len: self.row_len, terms, sums },
            None => Self::with_terms(rows, terms),
        }
    }

    /// Every row's residual `(y_i - prediction_i) / sqrt(1 + sum_l w_l^2)` against all the
    /// others, `[m, row_len]`. The divisor (`w` the normalised Berrut weights) is the
    /// residual's standard deviation for unit independent noise on every row: it puts end
    /// nodes, whose predictions extrapolate with large weights, on the same footing as
    /// interior ones.
    pub(super) fn residuals(&self) -> Vec<f64> {
        let mut out = vec![0.0; self.rows.len() * self.row_len];
        for (i, residual) in out.chunks_exact_mut(self.row_len).enumerate() {
            self.residual(i, residual);
        }
        out
    }

    /// Row `i`'s residual as [`Self::residuals`] gives it, into `out`.
    pub(super) fn residual(&self, i: usize, out: &mut [f64]) {
        let row_len = self.row_len;
        let numerator = &self.sums.numerators[i * row_len..(i + 1) * row_len];
        let (denominator, squares) = (self.sums.denominators[i], self.terms.squares[i]);
        scaled_residual(self.rows[i], |k| numerator[k], denominator, squares, out);
    }

    /// Its sums, for another pass to reuse as buffers.
    pub(super) fn into_sums(self) -> Sums {
        self.sums
    }

    /// Row `i`'s residual against the others but `c` (`i != c`) into `out`, its sums into
    /// `trial`'s row `at` (`trial` sized for one row fewer). At least three rows. One row at a
    /// time, so that a caller judging a removal can stop early.
    pub(super) fn residual_without(&self, c: usize, i: usize, (trial, at): (&mut Sums, usize), out: &mut [f64]) {
        let (m, row_len) = (self.rows.len(), self.row_len);
        let terms = self.terms.row(i);
        let numerator = &mut trial.numerators[at * row_len..(at + 1) * row_len];
        // The shorter side's sum: the other side's is the pass's sum less it and c's term.
        let (side, sign) = if 2 * c < m { (0..c, 1.0) } else { (c + 1..m, -1.0) };
        numerator.fill(0.0);
        let mut denominator = 0.0;
        for l in side {
            let term = terms[l];
            denominator += term;
            numerator.iter_mut().zip(self.rows[l]).for_each(|(acc, y)| *acc += term * y);
        }
        let (full, removed, term) = (&self.sums.numerators[i * row_len..(i + 1) * row_len], self.rows[c], terms[c]);
        for ((n, full), y) in numerator.iter_mut().zip(full).zip(removed) {
            *n = sign * (2.0 * *n - full + term * y);
        }
        let denominator = sign * (2.0 * denominator - self.sums.denominators[i] + term);
        trial.denominators[at] = denominator;
        let squares = self.terms.squares[i] - term * term;
        scaled_residual(self.rows[i], |k| numerator[k], denominator, squares, out);
    }
}

/// `(y - numerator / denominator) / sqrt(1 + squares / denominator^2)` per value of `y`: a
/// row's residual against a Berrut prediction with terms summing to `denominator` and squares
/// to `squares`, on the scale of unit independent noise.
fn scaled_residual(y: &[f64], numerator: impl Fn(usize) -> f64, denominator: f64, squares: f64, out: &mut [f64]) {
    let (inverse, inverse_gain) = inverse_and_gain(denominator, squares);
    for (k, (r, y)) in out.iter_mut().zip(y).enumerate() {
        *r = (y - numerator(k) * inverse) * inverse_gain;
    }
}

/// `1 / denominator` and `1 / sqrt(1 + squares / denominator^2)`: two divisions per row, not
/// two per value (a division costs several multiplications).
fn inverse_and_gain(denominator: f64, squares: f64) -> (f64, f64) {
    let gain = (1.0 + squares / (denominator * denominator)).sqrt();
    (1.0 / denominator, 1.0 / gain)
}

/// The residual of `target` against the Berrut interpolant of `others`, as
/// [`LeaveOneOut::residuals`] scales it, into `out`: `others` are the other rows in node order
/// (`target`'s not among them), each with `1 / (beta_target - beta_l)`. One prediction, where
/// a [`LeaveOneOut`] pass makes one per row.
pub(super) fn residual_against<'r>(target: &[f64], others: impl Iterator<Item = (&'r [f64], f64)>, out: &mut [f64]) {
    // The numerator is summed in `out`, then turned into the residual in place.
    out.fill(0.0);
    let (mut denominator, mut squares) = (0.0, 0.0);
    for (l, (row, inverse)) in others.enumerate() {
        let term = if l % 2 == 0 { 1.0 } else { -1.0 } * inverse;
        denominator += term;
        squares += term * term;
        out.iter_mut().zip(row).for_each(|(acc, y)| *acc += term * y);
    }
    let (inverse, inverse_gain) = inverse_and_gain(denominator, squares);
    for (r, y) in out.iter_mut().zip(target) {
        *r = (y - *r * inverse) * inverse_gain;
    }
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
    fn passes_removals_and_single_predictions_match_the_definition_with_and_without_each_row() {
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
            let mut one = vec![0.0; 3];
            let others_of = others.iter().map(|&l| (rows[l].as_slice(), 1.0 / (nodes[i] - nodes[l])));
            residual_against(&rows[i], others_of, &mut one);
            for (a, b) in one.iter().zip(direct(&rows, &nodes, i)) {
                assert!((a - b).abs() < 1e-12, "row {i} alone: {a} vs {b}");
            }
        }
        for c in 0..9 {
            let keep: Vec<usize> = (0..9).filter(|&i| i != c).collect();
            let rest: Vec<Vec<f64>> = keep.iter().map(|&i| rows[i].clone()).collect();
            let rest_nodes: Vec<f64> = keep.iter().map(|&i| nodes[i]).collect();
            let mut trial = Sums::default();
            trial.resize(8, 3);
            for (j, i) in keep.iter().copied().enumerate() {
                let mut without = vec![0.0; 3];
                loo.residual_without(c, i, (&mut trial, j), &mut without);
                for (a, b) in without.iter().zip(direct(&rest, &rest_nodes, j)) {
                    assert!((a - b).abs() < 1e-9, "without {c}, row {j}: {a} vs {b}");
                }
            }
            // What the trial left behind is the smaller set's pass, as is a new one.
            for sums in [Some(trial.clone()), None] {
                let next = loo.without(c, sums).residuals();
                for j in 0..8 {
                    for (a, b) in next[j * 3..(j + 1) * 3].iter().zip(direct(&rest, &rest_nodes, j)) {
                        assert!((a - b).abs() < 1e-9, "after removing {c}, row {j}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
