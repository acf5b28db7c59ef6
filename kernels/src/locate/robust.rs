//! Our locator: robust statistics on whole output rows, consistency and typicality together.
//!
//! Measured on a real MNIST CNN's logits (README, "Byzantine workers"), the outputs of
//! neighbouring workers differ about as much as a sign flip changes one: every worker holds a
//! different blend of the queries and the model is far from linear in it, so no smooth fit of
//! the answers tells a liar from an honest blend on its own. Two scores are therefore
//! combined, each a robust z-score (median and MAD over the group's responders, which an
//! honest majority keeps honest):
//!
//! - **consistency**: the leave-one-out residual `|y_i - B_{F \ i}(beta_i)|` of the Berrut
//!   interpolant over the other answers, scaled by its noise gain, pooled over the whole row
//!   (a liar corrupts its whole row, so coordinates are not voted separately as in the
//!   paper's method);
//! - **typicality**: how far the row's *sorted* values sit from the group's typical sorted
//!   row, per rank. A classifier's sorted logits have a characteristic profile (one or two
//!   classes far above the rest) whatever the query; a negated, noised, flattened or boosted
//!   row does not.
//!
//! Workers are removed one at a time, largest combined score first, re-scoring after each
//! removal (a liar also spoils its neighbours' consistency), while the score exceeds
//! [`THRESHOLD`] ([`COMPOSITION_THRESHOLD`] for probabilities). Nothing here depends on the
//! attack. On logits about 1% of honest workers
//! are removed when nobody lies at `K = 12` (3 % at `K = 4`, `N = 10`: a median and MAD over
//! nine responders are noisy; README, "Byzantine workers"). Class probabilities are judged on
//! their log-ratios: as they are, their sorted profiles are bimodal (near one-hot answers to
//! nearly pure queries, shared mass for blends) and `A` honest workers per group were removed
//! (README).

use super::composition::{centred_log_ratios, is_composition};
use super::loo::LeaveOneOut;
use crate::code::Code;

/// A worker is removed while its combined robust z-score (consistency + typicality) exceeds
/// this. Chosen by measurement (README, "Byzantine workers"): the honest false-positive rate
/// stays near 0.01 while sign flips are found.
pub const THRESHOLD: f64 = 6.0;

/// The same for class probabilities (judged on their log-ratios). There every answer that
/// is not a probability vector is removed without a score, which finds every liar of the
/// other attacks here but `constant` (and those that move an honest row's values, which no
/// score of one group finds), and at 6 a median and MAD over a small code's few responders
/// removed 3 to 6 % of the honest answers (`eval --byzantine 1,2 --k 2,3,4 --stragglers 1
/// --model lenet5 --dataset fashion-mnist --outputs softmax --calibration-groups 0`): at 10,
/// 0.85 to 3.3 %, with `constant` liars found 0.02-0.20 of the time instead of 0.14-0.40, at
/// about the same accuracy (README, "Byzantine workers").
pub const COMPOSITION_THRESHOLD: f64 = 10.0;

/// Differences below this fraction of a group's largest answer are not told apart, in
/// leave-one-out residuals or when comparing sorted rows.
const RESOLUTION: f64 = 1e-3;

/// The normal distribution's MAD-to-sigma factor.
const MAD_TO_SIGMA: f64 = 1.4826;

/// Up to `budget` suspects among `workers` (sorted, finite rows of `group`).
pub(super) fn suspects(code: &Code, group: &[f64], row_len: usize, workers: &[usize], budget: usize) -> Vec<usize> {
    let judged = Judged::new(group, row_len, workers);
    let mut removed: Vec<usize> = judged.outside.iter().copied().take(budget).collect();
    let mut keep: Vec<usize> = workers.iter().copied().filter(|w| !judged.outside.contains(w)).collect();
    // More outsiders than the budget: the rest stay, judged with the others.
    keep.extend(judged.outside.iter().skip(budget));
    keep.sort_unstable();
    while removed.len() < budget && keep.len() > 2 {
        let scores = combined_scores(code, &judged.values, row_len, &keep);
        let worst = worst(&scores);
        // NaN (from an overflow) counts as far outside.
        if scores[worst] <= judged.threshold() {
            break;
        }
        removed.push(keep.remove(worst));
    }
    removed.sort_unstable();
    removed
}

/// Every one of `workers`' (sorted, finite rows of `group`) score as [`suspects`] first ranks
/// them, nobody removed: the combined robust z-score of consistency and typicality, infinite
/// for a row that is not a probability vector where most are (NaN where an overflow made
/// one). One group's score barely tells an honest blend from a liar whose answer keeps an
/// honest row's profile (its values moved between classes); summed over many groups, in
/// which a worker serves different positions, it does: a serving coordinator accumulates
/// them per worker (`approxifer::serve`'s reputation).
pub fn scores(code: &Code, group: &[f64], row_len: usize, workers: &[usize]) -> Vec<f64> {
    let judged = Judged::new(group, row_len, workers);
    let inside: Vec<usize> = workers.iter().copied().filter(|w| !judged.outside.contains(w)).collect();
    let mut scores = vec![f64::INFINITY; workers.len()];
    if inside.len() > 2 {
        let inner = combined_scores(code, &judged.values, row_len, &inside);
        for (&w, score) in inside.iter().zip(inner) {
            let at = workers.binary_search(&w).expect("inside is a subset of workers");
            scores[at] = score;
        }
    } else {
        inside.iter().for_each(|w| scores[workers.binary_search(w).expect("a subset")] = 0.0);
    }
    scores
}

/// A group as the robust locator judges it. Class probabilities are compositions: judged as
/// they are, the near one-hot answers to nearly pure coded queries make every blend look
/// atypical. Where most answers are probability vectors, the others cannot be honest
/// (`outside`), and the rest are judged on their centred log-probabilities (the logits up to a
/// constant, Aitchison's clr transform).
struct Judged<'a> {
    values: std::borrow::Cow<'a, [f64]>,
    outside: Vec<usize>,
    /// Whether the rows are probability vectors, `values` their log-ratios.
    compositions: bool,
}

impl<'a> Judged<'a> {
    /// The score a removal needs: [`COMPOSITION_THRESHOLD`] for probability vectors.
    fn threshold(&self) -> f64 {
        if self.compositions { COMPOSITION_THRESHOLD } else { THRESHOLD }
    }

    fn new(group: &'a [f64], row_len: usize, workers: &[usize]) -> Self {
        let composition = |w: usize| is_composition(&group[w * row_len..(w + 1) * row_len]);
        if row_len >= 2 && 2 * workers.iter().filter(|&&w| composition(w)).count() > workers.len() {
            let outside = workers.iter().copied().filter(|&w| !composition(w)).collect();
            Judged { values: centred_log_ratios(group, row_len).into(), outside, compositions: true }
        } else {
            Judged { values: group.into(), outside: Vec::new(), compositions: false }
        }
    }
}

/// The combined robust z-scores of `keep`'s rows (sorted, at least three) of `group`.
fn combined_scores(code: &Code, group: &[f64], row_len: usize, keep: &[usize]) -> Vec<f64> {
    let nodes = &code.nodes().workers;
    let rows: Vec<&[f64]> = keep.iter().map(|&w| &group[w * row_len..(w + 1) * row_len]).collect();
    // Differences below the resolution say nothing: a group whose coded queries are all
    // one query (a serving coordinator pads a partial group with copies) answers the same
    // row everywhere but for rounding, and scaled by a MAD of 0, rounding is "far out"
    // (the test below: 1e-7 of rounding in two rows got one of them removed). Residuals
    // are in the answers' units; typicality is already in spreads per rank.
    let residuals = leave_one_out(&rows, |a, b| nodes[keep[a]].cos_difference(nodes[keep[b]]));
    let consistency = robust_z(&residuals, RESOLUTION * magnitude(&rows));
    let typicality = robust_z(&atypicality(&rows), RESOLUTION);
    consistency.iter().zip(&typicality).map(|(c, t)| c + t).collect()
}

/// `|y_i - B_{rows \ i}(beta_i)|` scaled by its noise gain, per row ([`LeaveOneOut`]).
/// Overflow gives `inf`, never NaN.
fn leave_one_out(rows: &[&[f64]], diff: impl Fn(usize, usize) -> f64) -> Vec<f64> {
    let row_len = rows[0].len();
    LeaveOneOut::new(rows.to_vec(), |a, b| 1.0 / diff(a, b))
        .residuals()
        .chunks_exact(row_len)
        .map(|r| {
            let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm.is_nan() { f64::INFINITY } else { norm }
        })
        .collect()
}

/// How far each row's sorted values (largest first) are from the rows' typical sorted
/// values: the root mean square over ranks of the per-rank robust z-score. A rank's spread
/// counts as at least [`RESOLUTION`] of the largest magnitude in the group: the low ranks of
/// near one-hot rows (class probabilities) all sit at about 0, and differences of 1e-6
/// there say nothing about a row.
fn atypicality(rows: &[&[f64]]) -> Vec<f64> {
    let floor = RESOLUTION * magnitude(rows);
    let sorted: Vec<Vec<f64>> = rows
        .iter()
        .map(|row| {
            let mut s = row.to_vec();
            s.sort_by(|a, b| b.total_cmp(a));
            s
        })
        .collect();
    let ranks = sorted[0].len();
    let mut sum_sq = vec![0.0; rows.len()];
    let mut column = vec![0.0; rows.len()];
    for rank in 0..ranks {
        column.iter_mut().zip(&sorted).for_each(|(c, s)| *c = s[rank]);
        for (acc, z) in sum_sq.iter_mut().zip(robust_z(&column, floor)) {
            *acc += z * z;
        }
    }
    sum_sq.iter().map(|s| (s / ranks as f64).sqrt()).collect()
}

/// The largest magnitude of any value of `rows` (infinite ones included).
fn magnitude(rows: &[&[f64]]) -> f64 {
    rows.iter().flat_map(|row| row.iter()).fold(0.0f64, |m, v| m.max(v.abs()))
}

/// The index of the largest score, NaN counting as largest (a score that overflowed came
/// from an answer far outside the others); ties go to the lower index.
fn worst(scores: &[f64]) -> usize {
    let key = |i: usize| if scores[i].is_nan() { f64::INFINITY } else { scores[i] };
    (0..scores.len()).fold(0, |best, i| if key(i) > key(best) { i } else { best })
}

/// `(v - median) / (1.4826 MAD)`, the spread at least `floor` and never zero, so identical
/// values give large but finite scores to anything that differs from them, and infinite ones
/// only for infinite inputs.
fn robust_z(values: &[f64], floor: f64) -> Vec<f64> {
    let centre = median(values);
    let deviations: Vec<f64> = values.iter().map(|v| (v - centre).abs()).collect();
    let spread =
        (MAD_TO_SIGMA * median(&deviations)).max(floor).max(f64::EPSILON * centre.abs()).max(f64::MIN_POSITIVE);
    values.iter().map(|v| (v - centre) / spread).collect()
}

/// The median (the upper one for an even count); NaN sorts last.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn robust_z_ignores_a_minority_of_outliers() {
        let z = robust_z(&[1.0, 2.0, 3.0, 4.0, 5.0, 1e9], 0.0);
        assert!(z[5] > 1e8);
        assert!(z[..5].iter().all(|v| v.abs() < 2.0));
        // Identical values: whatever differs stands out, finitely.
        let z = robust_z(&[7.0, 7.0, 7.0, 8.0], 0.0);
        assert!(z[3].is_finite() && z[3] > 1e10 && z[0] == 0.0);
        // ... unless told that such a difference is below resolution.
        assert_eq!(robust_z(&[7.0, 7.0, 7.0, 8.0], 0.5)[3], 2.0);
    }

    #[test]
    fn leave_one_out_of_a_constant_is_zero_and_finds_a_spike() {
        let rows: Vec<Vec<f64>> = (0..9).map(|i| vec![if i == 4 { 10.0 } else { 1.0 }; 3]).collect();
        let refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let nodes: Vec<f64> = (0..9).map(|i| 1.0 - i as f64 / 4.0).collect();
        let r = leave_one_out(&refs, |a, b| nodes[a] - nodes[b]);
        assert_eq!(worst(&r), 4);
        let flat: Vec<&[f64]> = rows.iter().enumerate().filter(|(i, _)| *i != 4).map(|(_, r)| r.as_slice()).collect();
        let nodes: Vec<f64> = nodes.iter().enumerate().filter(|(i, _)| *i != 4).map(|(_, v)| *v).collect();
        assert!(leave_one_out(&flat, |a, b| nodes[a] - nodes[b]).iter().all(|&v| v < 1e-12));
    }

    #[test]
    fn answers_equal_up_to_rounding_are_no_outliers_and_a_liar_among_them_is() {
        // Every coded query of a group one query: the same row everywhere, to the bit but for
        // two workers' rounding (a batch computed in another order): the residuals' MAD is 0.
        let (n, row_len) = (10, 10);
        let code = Code::new(crate::CodeParams::builder(4, n).stragglers(1).byzantine(1).build().unwrap()).unwrap();
        let row: Vec<f64> = (0..row_len).map(|c| if c == 3 { 9.0 } else { -1.0 - 0.3 * c as f64 }).collect();
        let rounded = |w: usize| if w == 2 || w == 7 { 1.0 + 1e-7 } else { 1.0 };
        let mut group: Vec<f64> = (0..n).flat_map(|w| row.iter().map(move |v| v * rounded(w))).collect();
        let workers: Vec<usize> = (0..n).collect();
        assert_eq!(suspects(&code, &group, row_len, &workers, 1), Vec::<usize>::new());
        group[6 * row_len..7 * row_len].iter_mut().for_each(|v| *v = -*v);
        assert_eq!(suspects(&code, &group, row_len, &workers, 1), vec![6]);
    }

    #[test]
    fn scores_rank_every_responder_as_the_first_pass_of_suspects_does() {
        let (n, row_len) = (10, 4);
        let code = Code::new(crate::CodeParams::builder(4, n).stragglers(1).byzantine(1).build().unwrap()).unwrap();
        // Class probabilities that vary smoothly over the workers; worker 6 answers a
        // probability vector negated, worker 3 does not answer.
        let row = |w: usize| {
            let p = 0.4 + 0.03 * w as f64;
            vec![p, 0.9 - p, 0.06, 0.04]
        };
        let mut group: Vec<f64> = (0..n).flat_map(row).collect();
        group[6 * row_len..7 * row_len].iter_mut().for_each(|v| *v = -*v);
        let workers: Vec<usize> = (0..n).filter(|&w| w != 3).collect();
        let scores = scores(&code, &group, row_len, &workers);
        assert_eq!(scores.len(), workers.len());
        // Not a probability vector where the others are: infinite, and the one suspected.
        assert_eq!(scores[workers.binary_search(&6).unwrap()], f64::INFINITY);
        assert!(scores.iter().enumerate().all(|(i, s)| workers[i] == 6 || s.is_finite()), "{scores:?}");
        assert_eq!(suspects(&code, &group, row_len, &workers, 1), vec![6]);
        // With the liar's row honest again, nobody stands out.
        let honest: Vec<f64> = (0..n).flat_map(row).collect();
        let scores = super::scores(&code, &honest, row_len, &workers);
        assert!(scores.iter().all(|&s| s.is_finite() && s <= THRESHOLD), "{scores:?}");
    }

    #[test]
    fn a_negated_row_is_atypical() {
        let rows: Vec<Vec<f64>> = (0..12)
            .map(|i| {
                let mut row = vec![-3.0 - 0.1 * i as f64; 10];
                row[i % 10] = 8.0 + 0.2 * i as f64;
                if i == 5 { row.iter().map(|v| -v).collect() } else { row }
            })
            .collect();
        let refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();
        let scores = robust_z(&atypicality(&refs), 0.0);
        assert_eq!(worst(&scores), 5);
        assert!(scores[5] > THRESHOLD);
    }
}
