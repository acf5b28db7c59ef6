//! The calibrated locator: it learns how *this* model's honest answers vary at every worker
//! position of *this* code, then removes the answers that honest traffic does not explain.
//!
//! Judged one group at a time (the [`robust`](super::robust) locator), an honest blend and a
//! liar look alike on a real model: neighbouring workers hold different blends of the queries
//! and the model is far from linear in them. A service sees thousands of honest groups, and at
//! a given worker position honest answers vary in a characteristic way. So every responder is
//! described by a feature vector:
//!
//! - its row sorted, largest first (typicality: a classifier's answer has its profile
//!   whatever the query, a regression model has its own);
//! - the logarithm of its row's spread (a flattened or rescaled row stands out in it);
//! - its row's leave-one-out residual against the other responders (consistency): the
//!   difference from the best linear prediction of it from theirs that the positions' honest
//!   covariance allows ([`conditional`](super::conditional), learnt from the same traffic;
//!   1.7x smaller than Berrut's interpolant leaves on MNIST logits), on the scale of that
//!   prediction's spread. A calibration file written before the predictor uses Berrut's
//!   interpolant, scaled by its noise gain.
//!
//! Probability vectors are first mapped to their centred log-ratios ([`Representation`]).
//! Per position, calibration fits two Gaussians to honest features (mean, and the inverse
//! Cholesky factor of the covariance for whitening): one to the whole feature, one to the
//! residual alone, so an answer that is typical but disagrees with its neighbours is not
//! diluted. Gross outliers of a first fit are left out, so a few liars in the calibration
//! traffic do not spoil it; each test's threshold is the squared Mahalanobis distance new
//! honest features exceed with its share of the `false_alarm` probability (read off each
//! calibration feature's distance under the fit of the others, [`held_out`], extrapolated
//! past the largest of them as an exponential tail, [`tail_quantile`]).
//!
//! A responder next to a missing one is predicted across the gap, so its honest residual is
//! larger: calibration also learns, per position, by how much (leaving one to three neighbours
//! out of the same traffic), and a residual is judged on the scale of its gap.
//!
//! Locating removes one responder at a time while some responder scores above its threshold.
//! A liar also raises its neighbours' scores, so of the few highest scorers the one removed is
//! the one whose removal leaves the rest looking most honest (trying one updates each row's
//! prediction in a few operations, and the few race best-first). With several
//! liars that can still pick an honest worker between two of them, so removals are then
//! swapped while that lowers the kept answers' total score, and a removed answer the rest
//! explain is put back. Nothing depends on the attack or on the model being a classifier.

use std::borrow::Cow;
use std::collections::VecDeque;

use nalgebra::DMatrix;

use super::composition::{centred_log_ratios, is_composition};
use super::conditional::{self, Conditional, LeftOut, Predictor, Solve};
use super::loo::{self, LeaveOneOut, Pool, Sums, Terms};
use crate::code::Code;
use crate::cpu::{Accumulator, Element};
use crate::error::{Error, Result};
use crate::family::NodeFamily;
use crate::params::{Layout, MaskPlacement};
use crate::shape::{expect_len, whole_groups};
use crate::vectorized::vectorized;

/// The default probability that an honest answer scores above its position's threshold:
/// about the fraction of honest workers removed on new traffic when nobody lies (README,
/// "Byzantine workers"), half the 1 % a service can afford.
pub const DEFAULT_FALSE_ALARM: f64 = 0.005;

/// Feature vectors longer than this are whitened coordinate by coordinate (a diagonal
/// covariance): a full covariance is `F^2` numbers per position and needs far more
/// calibration groups than `F` to estimate.
pub const MAX_FULL_COVARIANCE: usize = 64;

/// A calibration sample is an outlier (a liar in the calibration traffic), left out of the
/// final fit and of the threshold, when its distance under a first fit exceeds this many times
/// the samples' 90th percentile.
const OUTLIER_FACTOR: f64 = 10.0;

/// How many honest samples a position needs per feature before its covariance is trusted.
const SAMPLES_PER_FEATURE: usize = 2;

/// The length of a responder's feature vector for rows of `row_len` values.
pub fn feature_len(row_len: usize) -> usize {
    typicality_len(row_len) + row_len
}

/// The length of the typicality part (sorted row, log spread), which comes first.
fn typicality_len(row_len: usize) -> usize {
    row_len + usize::from(row_len >= 2)
}

/// `1 / (beta_a - beta_b)` for every pair of `code`'s workers, `[N, N]` (infinite on the
/// diagonal, never read), the differences computed from the angles (accurate for close nodes).
fn inverse_differences(code: &Code) -> Vec<f64> {
    let nodes = &code.nodes().workers;
    nodes.iter().flat_map(|a| nodes.iter().map(move |b| 1.0 / a.cos_difference(*b))).collect()
}

/// Gaps to the nearest responder on each side are told apart up to this many positions (1:
/// the neighbour answered); larger gaps count as this one.
const GAP_LEVELS: usize = 4;

/// Which gap class `keep[j]` is in (`keep` sorted worker indices, `n` workers): see
/// [`gap_class`].
fn gap_index(keep: &[usize], j: usize, n: usize) -> usize {
    gap_class(j.checked_sub(1).map(|p| keep[p]), keep[j], keep.get(j + 1).copied(), n)
}

/// The gap class of worker `w` whose nearest responders are `previous` and `next` (`None`:
/// none on that side), of `n` workers: by the distance to each (to the position before the
/// first worker or after the last where there is none), each capped at [`GAP_LEVELS`]. Every
/// worker of a full responder set is in class 0.
fn gap_class(previous: Option<usize>, w: usize, next: Option<usize>, n: usize) -> usize {
    let left = previous.map_or(w + 1, |p| w - p);
    let right = next.map_or(n - w, |next| next - w);
    (left.min(GAP_LEVELS) - 1) * GAP_LEVELS + right.min(GAP_LEVELS) - 1
}

/// The residual of `group`'s row `w` against the Berrut interpolant of `others` (sorted,
/// without `w`; [`loo::residual_against`]), into `out`.
fn residual_against(
    inverse: &[f64],
    n: usize,
    group: &[f64],
    row_len: usize,
    others: &[usize],
    w: usize,
    out: &mut [f64],
) {
    let row = |l: usize| &group[l * row_len..(l + 1) * row_len];
    loo::residual_against(row(w), others.iter().map(|&l| (row(l), inverse[w * n + l])), out);
}

/// Writes `row`'s typicality features into `out` (`typicality_len` values): the row sorted,
/// largest first, then the logarithm of its spread.
#[inline(always)]
fn typicality(row: &[f64], network: &SortingNetwork, out: &mut [f64]) {
    let row_len = row.len();
    let sorted = &mut out[..row_len];
    sorted.copy_from_slice(row);
    network.sort_descending(sorted);
    if row_len >= 2 {
        let (high, low) = (sorted[0], sorted[row_len - 1]);
        // The floor keeps a flat row finite (and far out) without letting rounding noise on a
        // large row count as spread.
        let floor = f64::EPSILON * (high.abs() + low.abs()) + f64::MIN_POSITIVE;
        out[row_len] = (high - low).max(floor).ln();
    }
}

/// Sorts rows of one length largest first. Short rows (a classifier's) go through Knuth's
/// merge-exchange network (TAOCP 5.2.2, Algorithm M), its compare-exchanges listed once and
/// branchless: an insertion sort's branches are a coin toss on every comparison, and this runs
/// for every responder of every group. Longer rows keep `sort_unstable`.
#[derive(Clone, Debug, Default)]
struct SortingNetwork {
    /// `(i, j)`, `i < j`: the larger of the two goes to `i`. None: sort the usual way.
    pairs: Option<Vec<(usize, usize)>>,
}

impl SortingNetwork {
    fn new(n: usize) -> Self {
        if n > NETWORK_SORT_MAX {
            return SortingNetwork { pairs: None };
        }
        let mut pairs = Vec::new();
        if n >= 2 {
            let top = 1 << (usize::BITS - (n - 1).leading_zeros() - 1);
            let mut p = top;
            while p > 0 {
                let (mut q, mut r, mut d) = (top, 0, p);
                loop {
                    pairs.extend((0..n - d).filter(|i| i & p == r).map(|i| (i, i + d)));
                    if q == p {
                        break;
                    }
                    (d, q, r) = (q - p, q / 2, p);
                }
                p /= 2;
            }
        }
        SortingNetwork { pairs: Some(pairs) }
    }

    /// Sorts finite `values` (of the length the network was made for) largest first.
    #[inline(always)]
    fn sort_descending(&self, values: &mut [f64]) {
        match &self.pairs {
            Some(pairs) => {
                for &(i, j) in pairs {
                    let (a, b) = (values[i], values[j]);
                    values[i] = a.max(b);
                    values[j] = a.min(b);
                }
            }
            None => values.sort_unstable_by(|a, b| b.total_cmp(a)),
        }
    }
}

/// Rows up to this long are sorted by a network ([`SortingNetwork`]).
const NETWORK_SORT_MAX: usize = 64;

/// The leave-one-out predictions of `keep`'s rows of `group`.
fn leave_one_out<'a>(
    inverse_differences: &[f64],
    n: usize,
    group: &'a [f64],
    row_len: usize,
    keep: &[usize],
) -> LeaveOneOut<'a> {
    let rows: Vec<&[f64]> = keep.iter().map(|&w| &group[w * row_len..(w + 1) * row_len]).collect();
    LeaveOneOut::new(rows, |a, b| inverse_differences[keep[a] * n + keep[b]])
}

/// What the calibrated locator knows of one code's honest answers: per worker position, the
/// Gaussian of honest features and the distance honest answers rarely exceed. Saved as JSON
/// by `approxifer calibrate`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// `K`, `N`, worker nodes and layout of the code it describes (the node positions are
    /// what the statistics depend on; `S` and `A` are not).
    pub queries: usize,
    pub workers: usize,
    pub nodes: NodeFamily,
    pub layout: Layout,
    /// `T` and the mask placement of a private code (absent from files of codes without
    /// privacy). Honest answers also vary with the masks' scale: learn with the one served.
    #[serde(default)]
    pub privacy: usize,
    #[serde(default)]
    pub masks: MaskPlacement,
    /// Values per answer row.
    pub row_len: usize,
    /// How answers are compared.
    pub representation: Representation,
    /// The probability an honest answer is flagged that the thresholds were set for.
    pub false_alarm: f64,
    /// Honest groups learnt from.
    pub groups: usize,
    /// Positions fitted without a single honest answer ([`CalibrationBuilder::fit_excluding`]:
    /// in traffic, a worker that always lies), increasing: their answers are removed first,
    /// and a missing one is filled in from the others by the code's own interpolant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspected: Vec<usize>,
    positions: Vec<Position>,
    /// Per position, how much larger honest residuals are when responders next to it are
    /// missing (`[N, GAP_LEVELS, GAP_LEVELS]`, by the distance to the nearest responder on
    /// each side; [`gap_index`]): the residual is divided by it before scoring. Empty (files
    /// written before it): 1.
    #[serde(default)]
    gap_scales: Vec<f64>,
    /// The leave-one-out predictor learnt from the honest traffic; none (files written
    /// before it): Berrut's interpolant of the other responders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    predictor: Option<Predictor>,
    /// [`inverse_differences`] of the code, made on first use.
    #[serde(skip)]
    inverse_differences: Memo<Vec<f64>>,
    /// The leave-one-out terms of all `N` workers answering, made on first use.
    #[serde(skip)]
    all_terms: Memo<Terms>,
    /// The sorting network for rows of `row_len` values, made on first use.
    #[serde(skip)]
    network: Memo<SortingNetwork>,
}

/// A value a [`Calibration`] makes from its code on first use and keeps: not part of what the
/// calibration is, so equality ignores it (and files never hold it).
#[derive(Clone, Debug)]
struct Memo<T>(std::sync::OnceLock<T>);

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo(std::sync::OnceLock::new())
    }
}

impl<T> PartialEq for Memo<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// How a calibration compares answers, chosen from the honest traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Representation {
    /// As they are.
    #[default]
    Values,
    /// As centred log-ratios: the honest answers are probability vectors (a model followed by
    /// softmax), and an answer that is not one cannot be honest.
    LogRatios,
}

impl Representation {
    /// `group`'s rows as this representation compares them, and whether each worker's row
    /// can be an honest answer at all.
    fn apply(self, group: &[f64], row_len: usize) -> (Cow<'_, [f64]>, Vec<bool>) {
        match self {
            Representation::Values => (Cow::Borrowed(group), vec![true; group.len() / row_len]),
            Representation::LogRatios => {
                let possible = group.chunks_exact(row_len).map(is_composition).collect();
                (Cow::Owned(centred_log_ratios(group, row_len)), possible)
            }
        }
    }

    /// The representation honest rows call for: log-ratios when all are probability vectors.
    fn of<'a>(mut rows: impl Iterator<Item = &'a [f64]>, row_len: usize) -> Representation {
        if row_len >= 2 && rows.all(is_composition) { Representation::LogRatios } else { Representation::Values }
    }
}

/// One worker position's honest statistics: two tests sharing the false-alarm budget. The
/// joint one sees everything; the consistency one only the residual, so an answer that is
/// typical in every way but disagrees with its neighbours (a stale or swapped reply) is not
/// diluted by the typicality coordinates.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Position {
    joint: Gaussian,
    consistency: Gaussian,
    /// Both tests' residual rows side by side ([`Paired`]), made on first use; none where
    /// either whitening is diagonal.
    #[serde(skip)]
    paired: Memo<Option<Paired>>,
}

/// The residual rows of both tests' full whitenings (each lower triangular, `[c, c]` once the
/// joint one's typicality columns are set aside), laid out as [`Interleaved`] does with the
/// joint test's four rows and then the consistency test's for each column: one loop makes
/// both tests' sums, eight independent ones. The means' whitened values are kept apart
/// (`L^-1 (r - m) = L^-1 r - L^-1 m`), so a residual is whitened as it comes and scaled after
/// ([`Residual`]).
#[derive(Clone, Debug)]
struct Paired {
    values: Vec<f64>,
    /// `-L^-1 m` of the joint test's residual part, which [`Position::prepare`] adds to the
    /// typicality's contribution, and of the consistency test (`c` values each).
    joint_offset: Vec<f64>,
    consistency_offset: Vec<f64>,
}

impl Paired {
    fn new(joint: &Gaussian, consistency: &Gaussian, c: usize) -> Option<Paired> {
        let f = joint.mean.len();
        let t = f - c;
        if joint.whitening.len() != f * f || consistency.whitening.len() != c * c {
            return None;
        }
        // Both have the same blocks and widths (`c` rows and columns each).
        let whitened_mean = |g: &Gaussian, first: usize| -> Vec<f64> {
            let width = g.mean.len();
            (first..width).map(|r| -(first..=r).map(|j| g.whitening[r * width + j] * g.mean[j]).sum::<f64>()).collect()
        };
        let (joint_offset, consistency_offset) = (whitened_mean(joint, t), whitened_mean(consistency, 0));
        let joint = Interleaved::new(&joint.whitening, f, t..f, t..f);
        let consistency = Interleaved::new(&consistency.whitening, c, 0..c, 0..c);
        let columns = joint.values.chunks_exact(4).zip(consistency.values.chunks_exact(4));
        let values = columns.flat_map(|(joint, consistency)| [joint, consistency].concat()).collect();
        Some(Paired { values, joint_offset, consistency_offset })
    }
}

/// A leave-one-out residual as `values` times `scale`: the learnt predictor's `q` and
/// `1 / sqrt(P_ii)` (whitened before it is scaled, so that the square root and division
/// overlap the whitening), Berrut's residual and 1.
#[derive(Clone, Copy, Debug)]
struct Residual<'r> {
    values: &'r [f64],
    scale: f64,
}

impl Position {
    /// Fits both tests from `samples` (`[m, F]`, typicality first): leaves out the gross
    /// outliers of a first joint fit, then fits each test on the rest.
    fn fit(position: usize, samples: &[f64], f: usize, row_len: usize, false_alarm: f64) -> Result<Position> {
        let m = samples.len() / f;
        let needed = SAMPLES_PER_FEATURE * f + 2;
        if m < needed {
            return Err(Error::TooFewCalibrationSamples { position, samples: m, needed });
        }
        let rows: Vec<&[f64]> = samples.chunks_exact(f).collect();
        // Trimming honest tails would narrow the covariance where liars are told apart, so
        // only gross outliers of a first fit are left out (liars in the calibration traffic).
        let first = Gaussian::fit(&rows, position, 0.5)?;
        let distances: Vec<f64> = rows.iter().map(|r| first.distance(r)).collect();
        let outlier = OUTLIER_FACTOR * quantile(&distances, 0.9);
        let kept: Vec<&[f64]> = rows.iter().zip(&distances).filter(|(_, d)| **d <= outlier).map(|(r, _)| *r).collect();
        let joint = Gaussian::fit(&kept, position, 1.0 - JOINT_SHARE * false_alarm)?;
        let residuals: Vec<&[f64]> = kept.iter().map(|r| &r[f - row_len..]).collect();
        let consistency = Gaussian::fit(&residuals, position, 1.0 - (1.0 - JOINT_SHARE) * false_alarm)?;
        Ok(Position { joint, consistency, paired: Memo::default() })
    }

    /// A suspected position's: nothing learnt (no samples, an identity whitening, the largest
    /// threshold, finite for JSON: it scores 0), never judged, as its answers are removed
    /// unscored.
    fn unfitted(f: usize, row_len: usize) -> Position {
        let nothing = |len: usize| Gaussian {
            samples: 0,
            mean: vec![0.0; len],
            whitening: vec![1.0; len],
            threshold: f64::MAX,
            typicality_rows: Memo::default(),
            residual_rows: Memo::default(),
        };
        Position { joint: nothing(f), consistency: nothing(row_len), paired: Memo::default() }
    }

    /// The part of the score a responder's own row decides (`centred`: scratch of the
    /// typicality's length): see [`Gaussian::prepare`].
    ///
    /// With a [`Paired`] layout, `tail` also takes the joint test's whitened mean, which
    /// [`Position::score`] then leaves out.
    #[inline(always)]
    fn prepare(&self, typicality: &[f64], centred: &mut [f64], tail: &mut [f64]) -> f64 {
        let head = self.joint.prepare(typicality, centred, tail);
        if let Some(paired) = self.paired(tail.len()) {
            tail.iter_mut().zip(&paired.joint_offset).for_each(|(t, o)| *t += o);
        }
        head
    }

    /// Both tests' residual rows side by side, for residuals of `c` values (none where either
    /// whitening is diagonal).
    #[inline(always)]
    fn paired(&self, c: usize) -> Option<&Paired> {
        self.paired.0.get_or_init(|| Paired::new(&self.joint, &self.consistency, c)).as_ref()
    }

    /// The score (above 1: suspect) of the responder whose typicality was prepared into
    /// `(head, tail)` ([`Self::prepare`]) and whose leave-one-out residual is `residual`
    /// (`scratch`: three times its length).
    #[inline(always)]
    fn score(&self, prepared: (f64, &[f64]), residual: Residual, scratch: &mut [f64]) -> f64 {
        let c = residual.values.len();
        let (joint, consistency) = match self.paired(c) {
            Some(paired) => paired_distances(paired, prepared, residual),
            None => {
                let (scaled, scratch) = scratch.split_at_mut(c);
                scaled.iter_mut().zip(residual.values).for_each(|(s, r)| *s = r * residual.scale);
                (self.joint.finish(Some(prepared), scaled, scratch), self.consistency.finish(None, scaled, scratch))
            }
        };
        (joint / self.joint.threshold).max(consistency / self.consistency.threshold)
    }

    /// Whether the statistics have the shapes features of `f` values with residuals of
    /// `row_len` need (a file can say anything).
    fn is_whole(&self, f: usize, row_len: usize) -> bool {
        self.joint.is_whole(f) && self.consistency.is_whole(row_len)
    }
}

/// Both tests' squared distances in one pass over [`Paired`] rows: what the two
/// [`Gaussian::finish`] calls give (up to rounding: the means are whitened apart), with
/// `tail` prepared by [`Position::prepare`].
#[inline(always)]
fn paired_distances(paired: &Paired, (head, tail): (f64, &[f64]), residual: Residual) -> (f64, f64) {
    let Residual { values: residual, scale } = residual;
    let c = residual.len();
    let (mut joint, mut consistency) = ([0.0f64; 4], [0.0f64; 4]);
    let mut offset = 0;
    for first in (0..c).step_by(4) {
        let width = c.min(first + 4);
        let values = &paired.values[offset..offset + 8 * width];
        offset += 8 * width;
        let mut sums = [0.0f64; 8];
        for (w, x) in values.chunks_exact(8).zip(residual) {
            let w: &[f64; 8] = w.try_into().expect("chunks of eight");
            sums.iter_mut().zip(w).for_each(|(sum, w)| *sum += w * x);
        }
        for k in 0..4.min(c - first) {
            let z = tail[first + k] + scale * sums[k];
            joint[k] += z * z;
            let y = paired.consistency_offset[first + k] + scale * sums[4 + k];
            consistency[k] += y * y;
        }
    }
    let finite = |d2: f64| if d2.is_nan() { f64::INFINITY } else { d2 };
    let total = |lanes: [f64; 4]| (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    (finite(head + total(joint)), finite(total(consistency)))
}

/// A Gaussian test: the squared Mahalanobis distance from the honest mean, against the
/// threshold honest samples exceed with the chosen probability.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Gaussian {
    /// Samples the fit used.
    samples: usize,
    mean: Vec<f64>,
    /// `L^-1` of the covariance `L L^T`, row-major `F x F` (lower triangular), or, for long
    /// features, `1 / sigma` per coordinate.
    whitening: Vec<f64>,
    threshold: f64,
    /// A full whitening's rows laid out for [`Gaussian::prepare`] (every row, the typicality's
    /// columns) and for [`Gaussian::finish`] (the residual's rows and columns), made on first
    /// use.
    #[serde(skip)]
    typicality_rows: Memo<Interleaved>,
    #[serde(skip)]
    residual_rows: Memo<Interleaved>,
}

/// Some rows of a lower-triangular matrix restricted to some columns, laid out by blocks of
/// four rows, column by column (zeros past each row's diagonal and past the last row), so that
/// four rows' products with a vector are summed in one vector operation: four running sums
/// the processor overlaps, where one sum would wait on every addition. Each row's sum gets
/// the same products in the same order as on its own.
#[derive(Clone, Debug, Default)]
struct Interleaved {
    values: Vec<f64>,
    /// Per block, the columns it holds (up to its last row's diagonal).
    widths: Vec<usize>,
}

impl Interleaved {
    /// Rows `rows` and columns `columns` of the row-major `[f, f]` lower-triangular `matrix`.
    fn new(matrix: &[f64], f: usize, rows: std::ops::Range<usize>, columns: std::ops::Range<usize>) -> Self {
        let (mut values, mut widths) = (Vec::new(), Vec::new());
        for first in rows.clone().step_by(4) {
            let width = columns.len().min((first + 4).saturating_sub(columns.start));
            for j in columns.start..columns.start + width {
                let value = |i: usize| if i < rows.end && j <= i { matrix[i * f + j] } else { 0.0 };
                values.extend((first..first + 4).map(value));
            }
            widths.push(width);
        }
        Interleaved { values, widths }
    }

    /// Calls `each(i, sums)` for every block, `i` its first row (counted from the first of
    /// `rows`) and `sums` its four rows' products with `x` (the columns' values).
    #[inline(always)]
    fn products(&self, x: &[f64], mut each: impl FnMut(usize, &[f64; 4])) {
        let mut offset = 0;
        for (block, &width) in self.widths.iter().enumerate() {
            let values = &self.values[offset..offset + 4 * width];
            offset += 4 * width;
            let mut sums = [0.0f64; 4];
            for (w, x) in values.chunks_exact(4).zip(&x[..width]) {
                let w: &[f64; 4] = w.try_into().expect("chunks of four");
                sums.iter_mut().zip(w).for_each(|(sum, w)| *sum += w * x);
            }
            each(4 * block, &sums);
        }
    }
}

impl Gaussian {
    /// The squared Mahalanobis distance of `feature` from the honest mean.
    fn distance(&self, feature: &[f64]) -> f64 {
        let f = self.mean.len();
        let mut d2 = 0.0;
        if self.whitening.len() == f {
            for ((x, m), s) in feature.iter().zip(&self.mean).zip(&self.whitening) {
                d2 += ((x - m) * s).powi(2);
            }
        } else {
            for r in 0..f {
                let row = &self.whitening[r * f..r * f + r + 1];
                let z: f64 = row.iter().zip(feature).zip(&self.mean).map(|((w, x), m)| w * (x - m)).sum();
                d2 += z * z;
            }
        }
        if d2.is_nan() { f64::INFINITY } else { d2 }
    }

    /// The whitened typicality part of a feature (which comes first, so the lower-triangular
    /// whitening's first rows see nothing else): returns its squared norm and writes its
    /// contribution to the remaining whitened coordinates into `tail` (`F - t` values);
    /// `centred` is scratch of the typicality's length. No allocation: this runs for every
    /// responder of every group.
    #[inline(always)]
    fn prepare(&self, typicality: &[f64], centred: &mut [f64], tail: &mut [f64]) -> f64 {
        let (f, t) = (self.mean.len(), typicality.len());
        for ((c, x), m) in centred.iter_mut().zip(typicality).zip(&self.mean) {
            *c = x - m;
        }
        if self.whitening.len() == f {
            tail.fill(0.0);
            return centred.iter().zip(&self.whitening).map(|(c, s)| (c * s).powi(2)).sum();
        }
        let rows = self.typicality_rows.0.get_or_init(|| Interleaved::new(&self.whitening, f, 0..f, 0..t));
        let mut head = 0.0;
        rows.products(centred, |first, sums| {
            for (r, sum) in (first..f).zip(sums) {
                if r < t {
                    head += sum * sum;
                } else {
                    tail[r - t] = *sum;
                }
            }
        });
        head
    }

    /// The squared Mahalanobis distance of the feature whose typicality part was `prepared`
    /// (none: the feature is the residual alone) and whose residual part is `residual`; the
    /// same as [`distance`](Self::distance). `scratch` has the residual's length.
    #[inline(always)]
    fn finish(&self, prepared: Option<(f64, &[f64])>, residual: &[f64], scratch: &mut [f64]) -> f64 {
        let (f, c) = (self.mean.len(), residual.len());
        let t = f - c;
        let mut d2 = prepared.map_or(0.0, |p| p.0);
        if self.whitening.len() == f {
            let centred = residual.iter().zip(&self.mean[t..]).map(|(x, m)| x - m);
            d2 += centred.zip(&self.whitening[t..]).map(|(c, s)| (c * s).powi(2)).sum::<f64>();
        } else {
            // The centred residual once, then four whitened coordinates at a time, their
            // squares summed in four lanes as well (rows past `c` add zero).
            let centred = &mut scratch[..c];
            for ((out, x), m) in centred.iter_mut().zip(residual).zip(&self.mean[t..]) {
                *out = x - m;
            }
            let rows = self.residual_rows.0.get_or_init(|| Interleaved::new(&self.whitening, f, t..f, t..f));
            let mut squares = [0.0f64; 4];
            rows.products(centred, |first, sums| {
                for (k, (square, sum)) in squares.iter_mut().zip(sums).enumerate() {
                    let partial = match prepared {
                        Some((_, tail)) if first + k < c => tail[first + k],
                        _ => 0.0,
                    };
                    let z = partial + sum;
                    *square += z * z;
                }
            });
            d2 += (squares[0] + squares[1]) + (squares[2] + squares[3]);
        }
        if d2.is_nan() { f64::INFINITY } else { d2 }
    }

    /// Fits `rows` and sets the threshold at the `level` quantile of their distances as
    /// answers it was not fitted on would have them ([`held_out`]).
    fn fit(rows: &[&[f64]], position: usize, level: f64) -> Result<Gaussian> {
        let f = rows[0].len();
        let mut fitted = Gaussian::moments(rows, f, position)?;
        let distances: Vec<f64> = rows.iter().map(|r| fitted.distance(r)).collect();
        // The closed form holds for a full covariance; a diagonal one keeps its own.
        let distances = if fitted.whitening.len() == f * f { held_out(&distances) } else { distances };
        fitted.threshold = tail_quantile(&distances, level);
        Ok(fitted)
    }

    fn is_whole(&self, f: usize) -> bool {
        // A full whitening is lower triangular: scoring multiplies by the zeros past a row's
        // diagonal (`finish`), so a file must hold them.
        let triangular = || (0..f * f).all(|at| at % f <= at / f || self.whitening[at] == 0.0);
        self.mean.len() == f
            && (self.whitening.len() == f || (self.whitening.len() == f * f && triangular()))
            && self.threshold > 0.0
            && !self.threshold.is_nan()
    }

    /// Mean and whitening of `rows` (threshold unset). A coordinate that never varies gets a
    /// tiny variance, so any departure from it is far out but finite.
    fn moments(rows: &[&[f64]], f: usize, position: usize) -> Result<Gaussian> {
        let m = rows.len() as f64;
        let mut mean = vec![0.0; f];
        rows.iter().for_each(|r| mean.iter_mut().zip(*r).for_each(|(a, v)| *a += v / m));
        let centred = DMatrix::from_fn(rows.len(), f, |i, j| rows[i][j] - mean[j]);
        let scale = mean.iter().fold(1.0f64, |s, v| s.max(v.abs()));
        let ridge = (1e-9 * scale).powi(2);
        let whitening = if f > MAX_FULL_COVARIANCE {
            (0..f)
                .map(|j| {
                    let variance = centred.column(j).norm_squared() / (m - 1.0);
                    1.0 / (variance + ridge).sqrt()
                })
                .collect()
        } else {
            let mut covariance = centred.transpose() * &centred / (m - 1.0);
            let trace = covariance.trace() / f as f64;
            for j in 0..f {
                covariance[(j, j)] += 1e-9 * trace + ridge;
            }
            let cholesky = covariance.cholesky().ok_or(Error::SingularCalibration { position })?;
            let inverse = cholesky
                .l()
                .solve_lower_triangular(&DMatrix::identity(f, f))
                .ok_or(Error::SingularCalibration { position })?;
            (0..f * f).map(|i| inverse[(i / f, i % f)]).collect()
        };
        Ok(Gaussian {
            samples: rows.len(),
            mean,
            whitening,
            threshold: f64::INFINITY,
            typicality_rows: Memo::default(),
            residual_rows: Memo::default(),
        })
    }
}

impl Calibration {
    /// Whether this calibration describes `code` with rows of `row_len` values, and is whole;
    /// the error says what differs.
    pub fn check(&self, code: &Code, row_len: usize) -> Result<()> {
        if !self.describes(code) || self.row_len != row_len {
            let p = code.params();
            let ours = (self.queries, self.workers, self.nodes, self.layout, self.row_len, self.privacy, self.masks);
            let theirs = (p.queries(), p.workers(), p.nodes(), p.layout(), row_len, p.privacy(), p.masks());
            type Shape = (usize, usize, NodeFamily, Layout, usize, usize, MaskPlacement);
            let describe = |(k, n, nodes, layout, c, t, masks): Shape| {
                let privacy = if t > 0 { format!(", T = {t} ({masks} masks)") } else { String::new() };
                format!("K = {k}, N = {n}, {nodes} nodes, {layout}{privacy}, {c} outputs")
            };
            return Err(Error::CalibrationMismatch { calibration: describe(ours), code: describe(theirs) });
        }
        // A file can say anything: every position must have the shapes scoring relies on.
        let f = feature_len(row_len);
        if self.positions.len() != self.workers {
            return Err(Error::InvalidCalibration { position: None, positions: self.positions.len() });
        }
        let gaps_whole = self.gap_scales.is_empty()
            || (self.gap_scales.len() == self.workers * GAP_LEVELS * GAP_LEVELS
                && self.gap_scales.iter().all(|s| s.is_finite() && *s > 0.0));
        if !gaps_whole {
            return Err(Error::InvalidCalibration { position: None, positions: self.positions.len() });
        }
        if self.predictor.as_ref().is_some_and(|p| !p.is_whole(self.workers, row_len)) {
            return Err(Error::InvalidCalibration { position: None, positions: self.positions.len() });
        }
        check_suspects(&self.suspected, self.workers)?;
        match self.positions.iter().position(|p| !p.is_whole(f, row_len)) {
            Some(position) => Err(Error::InvalidCalibration { position: Some(position), positions: self.workers }),
            None => Ok(()),
        }
    }

    /// Whether it was learnt for `code` (its `K`, `N`, nodes, layout and privacy: what the
    /// statistics depend on), whatever the rows' length; [`Self::check`] says what differs.
    pub fn describes(&self, code: &Code) -> bool {
        let p = code.params();
        (self.queries, self.workers, self.nodes, self.layout, self.privacy, self.masks)
            == (p.queries(), p.workers(), p.nodes(), p.layout(), p.privacy(), p.masks())
    }

    /// Fills, in place, the rows of the workers `masks` leaves out of each group (stragglers
    /// and removed answers) with what the learnt predictor expects of them given the
    /// responders' rows (the Gaussian conditional mean; for probability vectors, of their
    /// centred log-ratios, mapped back to probabilities), so that the group decodes from all
    /// `N` nodes with the code itself instead of from the responders with its erasure code.
    /// On MNIST logits at the least `N` this keeps up to 0.006 more of the accuracy under the
    /// attacks (README, "Byzantine workers"). Returns `false`, with nothing written, for a
    /// calibration without a predictor (a file written before it).
    pub fn impute<T: Element>(&self, code: &Code, outputs: &mut [T], row_len: usize, masks: &[bool]) -> Result<bool> {
        let Some(predictor) = &self.predictor else { return Ok(false) };
        self.check(code, row_len)?;
        let n = self.workers;
        let groups = whole_groups("worker outputs", outputs.len(), n, row_len)?;
        expect_len("responder masks", masks.len(), groups * n)?;
        for (group, mask) in outputs.chunks_exact_mut(n * row_len).zip(masks.chunks_exact(n)) {
            let keep: Vec<usize> = (0..n).filter(|&w| mask[w]).collect();
            if keep.len() == n || keep.is_empty() {
                continue;
            }
            let values = super::widen(group);
            let (mut values, _) = self.representation.apply(&values, row_len);
            predictor.impute(values.to_mut(), row_len, &keep);
            // A suspected position's row, which the predictor knows nothing of: the code's own
            // interpolant of every other row (now all filled in) at its node.
            let nodes = &code.nodes().workers;
            for &w in self.suspected.iter().filter(|&&w| !mask[w]) {
                let others: Vec<usize> = (0..n).filter(|&l| l != w).collect();
                let mut weights = vec![0.0; others.len()];
                crate::berrut::weights_into(others.iter().map(|&l| nodes[w].cos_difference(nodes[l])), &mut weights);
                let values = values.to_mut();
                let mut row = vec![0.0; row_len];
                for (&l, weight) in others.iter().zip(&weights) {
                    row.iter_mut().zip(&values[l * row_len..(l + 1) * row_len]).for_each(|(r, v)| *r += weight * v);
                }
                values[w * row_len..(w + 1) * row_len].copy_from_slice(&row);
            }
            for (w, row) in values.to_mut().chunks_exact_mut(row_len).enumerate().filter(|(w, _)| !mask[*w]) {
                if self.representation == Representation::LogRatios {
                    // Back from centred log-ratios: the probabilities they are the logarithms of.
                    let top = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    row.iter_mut().for_each(|v| *v = (*v - top).exp());
                    let total: f64 = row.iter().sum();
                    row.iter_mut().for_each(|v| *v /= total);
                }
                let narrow: Vec<T::Acc> = row.iter().map(|&v| T::Acc::from_weight(v)).collect();
                T::narrow(&narrow, &mut group[w * row_len..(w + 1) * row_len]);
            }
        }
        Ok(true)
    }

    /// Each of `keep`'s (squared Mahalanobis distance / threshold): above 1 is suspect.
    pub fn scores(&self, code: &Code, group: &[f64], keep: &[usize]) -> Vec<f64> {
        let (group, possible) = self.representation.apply(group, self.row_len);
        let mut prepared = Prepared::default();
        self.prepare(&group, keep, &possible, &mut prepared);
        self.pass_scores(code, &group, keep, &prepared, &mut Buffers::new(self.row_len))
    }

    /// The scores of `keep` (every worker of it once in `visit`, in that order), from one
    /// leave-one-out pass over their rows, unless their running sum reaches `bound` (scores
    /// are never negative: the total would too).
    fn scores_within(
        &self,
        code: &Code,
        group: &[f64],
        keep: &[usize],
        prepared: &Prepared,
        (visit, bound): (impl Iterator<Item = usize>, f64),
        buffers: &mut Buffers,
    ) -> Option<Vec<f64>> {
        let loo = self.leave_one_out(code, group, keep, &mut buffers.pool);
        let Buffers { residual, scratch, pool, .. } = buffers;
        let mut scores = vec![f64::NAN; keep.len()];
        let (mut running, mut within) = (0.0, true);
        for w in visit {
            let j = keep.binary_search(&w).expect("a worker of keep");
            let residual = loo.residual(j, residual);
            scores[j] = self.score(w, gap_index(keep, j, self.workers), residual, prepared, scratch);
            running += scores[j];
            if running >= bound {
                within = false;
                break;
            }
        }
        loo.recycle(pool);
        within.then_some(scores)
    }

    /// The scores of `keep`, from one leave-one-out pass over their rows.
    fn pass_scores(
        &self,
        code: &Code,
        group: &[f64],
        keep: &[usize],
        prepared: &Prepared,
        buffers: &mut Buffers,
    ) -> Vec<f64> {
        let loo = self.leave_one_out(code, group, keep, &mut buffers.pool);
        let scores = self.scores_of(keep, &loo, prepared, buffers);
        loo.recycle(&mut buffers.pool);
        scores
    }

    /// `keep`'s leave-one-out pass (the learnt predictor's buffers from `pool`).
    fn leave_one_out<'a>(&'a self, code: &Code, group: &'a [f64], keep: &[usize], pool: &mut Pool) -> Pass<'a> {
        let (n, row_len) = (self.workers, self.row_len);
        if let Some(predictor) = &self.predictor {
            return Pass::Learned(Conditional::new(predictor, group, row_len, keep, pool));
        }
        let inverse = self.inverse_differences.0.get_or_init(|| inverse_differences(code));
        if keep.len() < n {
            return Pass::Berrut(leave_one_out(inverse, n, group, row_len, keep));
        }
        // Everyone answered (`keep` is sorted and distinct): the terms are the same every time.
        let terms = self.all_terms.0.get_or_init(|| Terms::new(n, |a, b| inverse[a * n + b]));
        Pass::Berrut(LeaveOneOut::with_terms(group.chunks_exact(row_len).collect(), Cow::Borrowed(terms)))
    }

    /// The part of every `workers`' score that does not depend on the other responders (its
    /// typicality, whitened), into `prepared` (whatever it held before); a row no honest worker
    /// returns (`possible` false) scores infinite.
    fn prepare(&self, group: &[f64], workers: &[usize], possible: &[bool], prepared: &mut Prepared) {
        vectorized(
            #[inline(always)]
            || {
                let (row_len, t) = (self.row_len, typicality_len(self.row_len));
                prepared.typicality.resize(2 * t, 0.0);
                let (feature, centred) = prepared.typicality.split_at_mut(t);
                let network = self.network.0.get_or_init(|| SortingNetwork::new(row_len));
                prepared.heads.clear();
                prepared.heads.resize(self.workers, f64::NAN);
                // Only the prepared workers' tails are read (the others' heads are NaN).
                prepared.tails.resize(self.workers * row_len, 0.0);
                for &w in workers.iter().filter(|&&w| possible[w]) {
                    typicality(&group[w * row_len..(w + 1) * row_len], network, feature);
                    let tail = &mut prepared.tails[w * row_len..(w + 1) * row_len];
                    prepared.heads[w] = self.positions[w].prepare(feature, centred, tail);
                }
            },
        )
    }

    /// The scores of `keep` given their leave-one-out pass, each residual judged on the scale
    /// honest ones have next to the gaps `keep` leaves.
    fn scores_of(&self, keep: &[usize], loo: &Pass, prepared: &Prepared, buffers: &mut Buffers) -> Vec<f64> {
        let Buffers { residual, scratch, .. } = buffers;
        (0..keep.len())
            .map(|j| {
                let residual = loo.residual(j, residual);
                self.score(keep[j], gap_index(keep, j, self.workers), residual, prepared, scratch)
            })
            .collect()
    }

    /// Which of `candidates` (indices into `keep`) to remove: the one whose removal leaves the
    /// others' total score lowest (ties: the first), each row judged against the others but
    /// the candidate with residuals taken as they are (no gap scale). The total, not the
    /// highest: with several liars the highest left is another liar's whichever candidate
    /// goes, while removing a liar lowers every neighbour's score it had raised (measured on
    /// MNIST logits at the least `N`: more liars found under every attack, e.g. random
    /// answers 0.89 / 0.84 / 0.87 against 0.84 / 0.79 / 0.81 at `A = 1, 2, 3`, and far fewer
    /// groups left for [`refine`] to repair). A best-first race: the candidate whose total
    /// so far is lowest scores its next row (rows in `order`, those that scored highest with
    /// the candidate kept first), and the first to be lowest with every row scored wins, since
    /// the others' totals can only grow (the leader scores [`STRIDE`] rows at a time: more
    /// rows scored, the same winner but for ties). Returns the winner's index in `candidates`;
    /// its trial (same index in `trials`) holds the next pass's sums and scores.
    fn choose_removal(
        &self,
        loo: &Pass,
        keep: &[usize],
        (order, candidates): (&[usize], &[usize]),
        prepared: &Prepared,
        trials: &mut [Trial],
        buffers: &mut Buffers,
    ) -> usize {
        vectorized(
            #[inline(always)]
            || {
                let Buffers { residual, scratch, .. } = buffers;
                // Per candidate: its total so far and how far along `order` it is.
                let mut races = [(0.0f64, 0usize); CANDIDATES];
                let races = &mut races[..candidates.len()];
                for trial in trials.iter_mut() {
                    trial.sums.resize(keep.len() - 1, self.row_len);
                    trial.scores.resize(keep.len() - 1, 0.0);
                }
                loop {
                    let leader = (0..candidates.len())
                        .min_by(|&a, &b| races[a].0.total_cmp(&races[b].0).then(a.cmp(&b)))
                        .expect("at least one candidate");
                    let candidate = candidates[leader];
                    let (total, next) = &mut races[leader];
                    let Trial { sums, scores } = &mut trials[leader];
                    let mut scored = 0;
                    while scored < STRIDE {
                        if order.get(*next) == Some(&candidate) {
                            *next += 1;
                        }
                        let Some(&i) = order.get(*next) else { break };
                        *next += 1;
                        let at = if i < candidate { i } else { i - 1 };
                        let residual = loo.residual_without(candidate, i, (&mut *sums, at), residual);
                        scores[at] = self.score(keep[i], 0, residual, prepared, scratch);
                        *total += scores[at];
                        scored += 1;
                    }
                    if scored == 0 {
                        return leader;
                    }
                }
            },
        )
    }

    /// `keep`'s scores after a removal whose trial scored them with raw residuals: the
    /// workers next to a gap are scored again on its scale ([`Self::scores_of`]).
    fn rescore_gaps(&self, keep: &[usize], loo: &Pass, scores: &mut [f64], prepared: &Prepared, buffers: &mut Buffers) {
        let Buffers { residual, scratch, .. } = buffers;
        for (j, score) in scores.iter_mut().enumerate() {
            let gap = gap_index(keep, j, self.workers);
            if gap > 0 {
                let residual = loo.residual(j, residual);
                *score = self.score(keep[j], gap, residual, prepared, scratch);
            }
        }
    }

    /// Worker `w`'s score with leave-one-out `residual` in gap class `gap` (`scratch`: three
    /// times the residual's length).
    fn score(&self, w: usize, gap: usize, residual: Residual, prepared: &Prepared, scratch: &mut [f64]) -> f64 {
        vectorized(
            #[inline(always)]
            || {
                let row_len = self.row_len;
                let head = prepared.heads[w];
                if head.is_nan() {
                    return f64::INFINITY;
                }
                let residual = match self.gap_scales.get(w * GAP_LEVELS * GAP_LEVELS + gap) {
                    Some(&scale) if gap > 0 && scale != 1.0 => Residual { scale: residual.scale / scale, ..residual },
                    _ => residual,
                };
                self.positions[w].score((head, &prepared.tails[w * row_len..(w + 1) * row_len]), residual, scratch)
            },
        )
    }

    /// The score `w` (not in `keep`) would have were it kept: its residual against the
    /// interpolant of `keep` (one prediction, not a pass over the group), judged in the gap
    /// class it would be in and as it is.
    fn score_against(
        &self,
        (code, group): (&Code, &[f64]),
        prepared: &Prepared,
        (keep, w): (&[usize], usize),
        buffers: &mut Buffers,
    ) -> Against {
        let n = self.workers;
        let Buffers { residual, scratch, solve, .. } = buffers;
        match &self.predictor {
            Some(predictor) => {
                conditional::residual_against(predictor, group, self.row_len, (keep, w), residual, solve)
            }
            None => {
                let inverse = self.inverse_differences.0.get_or_init(|| inverse_differences(code));
                residual_against(inverse, n, group, self.row_len, keep, w, residual);
            }
        }
        let at = keep.partition_point(|&k| k < w);
        let gap = gap_class(at.checked_sub(1).map(|p| keep[p]), w, keep.get(at).copied(), n);
        let residual = Residual { values: residual, scale: 1.0 };
        let raw = self.score(w, 0, residual, prepared, scratch);
        let gaps = if gap == 0 { raw } else { self.score(w, gap, residual, prepared, scratch) };
        Against { gaps, raw }
    }

    /// Whether `w`'s own row scores above its threshold whatever the others answer: its
    /// typicality alone is beyond the joint test's (or it is no honest answer at all).
    fn atypical(&self, prepared: &Prepared, w: usize) -> bool {
        let head = prepared.heads[w];
        head.is_nan() || head > self.positions[w].joint.threshold
    }

    /// Per position: the samples fitted and the threshold (infinite for a suspected one:
    /// nothing it answers is kept); for `/metrics` and reports.
    pub fn summary(&self) -> Vec<PositionSummary> {
        self.positions
            .iter()
            .enumerate()
            .map(|(w, p)| {
                let suspected = self.suspected.binary_search(&w).is_ok();
                PositionSummary {
                    samples: p.joint.samples,
                    threshold: if suspected { f64::INFINITY } else { p.joint.threshold },
                }
            })
            .collect()
    }
}

/// One responder set's leave-one-out pass, by the calibration's learnt predictor or, for a
/// calibration without one, by Berrut's interpolant.
enum Pass<'a> {
    Berrut(LeaveOneOut<'a>),
    Learned(Conditional<'a>),
}

impl<'a> Pass<'a> {
    /// Row `i`'s residual (Berrut's written into `out`).
    fn residual<'s>(&'s self, i: usize, out: &'s mut [f64]) -> Residual<'s> {
        match self {
            Pass::Berrut(loo) => {
                loo.residual(i, out);
                Residual { values: out, scale: 1.0 }
            }
            Pass::Learned(conditional) => {
                let (values, scale) = conditional.unscaled(i);
                Residual { values, scale }
            }
        }
    }

    /// Row `i`'s residual with row `c` left out as well, its sums into `trial`'s row (Berrut's
    /// residual written into `out`).
    #[inline(always)]
    fn residual_without<'s>(
        &self,
        c: usize,
        i: usize,
        (trial, at): (&'s mut Sums, usize),
        out: &'s mut [f64],
    ) -> Residual<'s> {
        match self {
            Pass::Berrut(loo) => {
                loo.residual_without(c, i, (trial, at), out);
                Residual { values: out, scale: 1.0 }
            }
            Pass::Learned(conditional) => {
                let scale = conditional.unscaled_without(c, i, (&mut *trial, at));
                Residual { values: &trial.numerators[at * out.len()..(at + 1) * out.len()], scale }
            }
        }
    }

    /// The pass's sums, for a trial to reuse (its other buffers to `pool`).
    fn into_sums(self, pool: &mut Pool) -> Sums {
        match self {
            Pass::Berrut(loo) => loo.into_sums(),
            Pass::Learned(conditional) => conditional.into_sums(pool),
        }
    }

    /// Gives its buffers to `pool`.
    fn recycle(self, pool: &mut Pool) {
        let sums = self.into_sums(pool);
        pool.give_sums(sums);
    }

    fn without(&self, c: usize, sums: Option<Sums>, pool: &mut Pool) -> Pass<'a> {
        match self {
            Pass::Berrut(loo) => Pass::Berrut(loo.without(c, sums)),
            Pass::Learned(conditional) => Pass::Learned(conditional.without(c, sums, pool)),
        }
    }
}

/// Scratch for scoring one row at a time: a residual, what [`Calibration::score`] needs
/// (three residuals' length) and what a single prediction solves; and the buffers of passes
/// done with.
#[derive(Debug, Default)]
struct Buffers {
    residual: Vec<f64>,
    scratch: Vec<f64>,
    solve: Solve,
    pool: Pool,
}

impl Buffers {
    fn new(row_len: usize) -> Self {
        let mut buffers = Buffers::default();
        buffers.fit(row_len);
        buffers
    }

    /// Sized for rows of `row_len` (the contents are scratch, written before they are read).
    fn fit(&mut self, row_len: usize) {
        self.residual.resize(row_len, 0.0);
        self.scratch.resize(3 * row_len, 0.0);
    }
}

/// What locating needs besides the calibration, kept from one group to the next (one per
/// thread, [`super::locate`]), so that a group allocates little: its passes' buffers, its
/// removals' trials and its responders' prepared scores.
#[derive(Debug, Default)]
pub(super) struct Workspace {
    buffers: Buffers,
    trials: [Trial; CANDIDATES],
    prepared: Prepared,
    /// [`rank_descending`]'s.
    order: Vec<usize>,
    ranking: Vec<u64>,
}

/// A removal tried ([`Calibration::choose_removal`]): the pass's sums without the candidate and
/// the other rows' scores on raw residuals, indexed as once the candidate is gone.
#[derive(Debug, Default)]
struct Trial {
    sums: Sums,
    scores: Vec<f64>,
}

/// Every responder's score, the part its own row decides: per worker, the whitened
/// typicality's squared norm (NaN: not prepared, a row no honest worker returns) and its
/// contribution to the residual's whitened coordinates (`row_len` values); and scratch for
/// [`Calibration::prepare`].
#[derive(Clone, Debug, Default)]
struct Prepared {
    heads: Vec<f64>,
    tails: Vec<f64>,
    typicality: Vec<f64>,
}

/// What [`Calibration::summary`] reports per worker position.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PositionSummary {
    pub samples: usize,
    pub threshold: f64,
}

/// Up to `budget` suspects among `workers` (sorted, finite rows of `group`): first those whose
/// own rows are [`CLEAR`]ly atypical, then one at a time while some responder scores above its
/// threshold. A liar also raises its neighbours' scores (their residuals are predicted from
/// it), so the one removed is, among the [`CANDIDATES`] highest scorers, the one whose removal
/// leaves the others' total score lowest: the removal that best explains the group. Whether
/// to go on is judged with residuals next to a removal on the scale honest ones have there
/// ([`gap_index`]), so that a removal does not start a cascade of false alarms. Then [`refine`]
/// undoes the removals that, with several liars, went to the wrong worker, and [`restore`]
/// those the rest of the group explains.
pub(super) fn suspects(
    calibration: &Calibration,
    code: &Code,
    group: &[f64],
    workers: &[usize],
    budget: usize,
    workspace: &mut Workspace,
) -> Vec<usize> {
    // Three responders (a code for one query with one liar, a straggler gone): leaving one
    // out leaves two, too few for the learnt scores to weigh (the loop below needs four),
    // while the honest two answer alike and the median of three names the odd one out.
    if workers.len() <= 3 {
        return super::robust::suspects(code, group, calibration.row_len, workers, budget);
    }
    if calibration.suspected.is_empty() {
        return judged_suspects(calibration, code, group, workers, budget, workspace);
    }
    // Answers from the suspected positions go first, unjudged (nothing was learnt of them);
    // past the budget they stay, and score 0 ([`Position::unfitted`]), their rows no part of
    // the others' predictions (the predictor learnt them independent of every position).
    let (mut first, mut judged): (Vec<usize>, Vec<usize>) =
        workers.iter().partition(|w| calibration.suspected.binary_search(w).is_ok());
    judged.extend(first.split_off(first.len().min(budget)));
    judged.sort_unstable();
    let mut removed = judged_suspects(calibration, code, group, &judged, budget - first.len(), workspace);
    removed.extend(first);
    removed.sort_unstable();
    removed
}

/// [`suspects`] among the positions the calibration learnt.
fn judged_suspects(
    calibration: &Calibration,
    code: &Code,
    group: &[f64],
    workers: &[usize],
    budget: usize,
    workspace: &mut Workspace,
) -> Vec<usize> {
    let Workspace { buffers, trials, prepared, order, ranking } = workspace;
    buffers.fit(calibration.row_len);
    let (group, possible) = calibration.representation.apply(group, calibration.row_len);
    let group = &group[..];
    calibration.prepare(group, workers, &possible, prepared);
    let prepared = &*prepared;
    // An answer far beyond its threshold on its own row alone scores above it whoever else is
    // kept: the loop below would go on until it is removed, `restore` never puts it back and
    // `refine` only for a kept answer scoring higher still. So it goes first, the most
    // atypical first, with no pass or race spent on it. Not one just past its threshold:
    // honest answers are, a few in a thousand (measured on MNIST logits at A = 1: 0.930 of
    // the Gaussian-10 liars found, against 0.945). And not
    // the last removal of the budget: an honest answer can be far out too, and a liar beside
    // it should be weighed against it by the loop's race, not lose to it unweighed (0.955).
    let how_atypical = |w: usize| {
        let head = prepared.heads[w];
        if head.is_nan() { f64::INFINITY } else { head / calibration.positions[w].joint.threshold }
    };
    let mut removed: Vec<usize> = workers.iter().copied().filter(|&w| how_atypical(w) >= CLEAR).collect();
    removed.sort_by(|&a, &b| how_atypical(b).total_cmp(&how_atypical(a)));
    removed.truncate(budget.saturating_sub(1).min(workers.len().saturating_sub(3)));
    let mut keep: Vec<usize> = workers.iter().copied().filter(|w| !removed.contains(w)).collect();
    // Whether every kept answer was seen below its threshold (nothing left to refine).
    let mut settled = false;
    // `keep`'s leave-one-out pass: a removal's trial leaves the next one behind.
    let mut loo = calibration.leave_one_out(code, group, &keep, &mut buffers.pool);
    let mut scores = calibration.scores_of(&keep, &loo, prepared, buffers);
    while removed.len() < budget && keep.len() > 3 {
        if scores.iter().all(|s| *s <= 1.0) {
            settled = true;
            break;
        }
        rank_descending(&scores, ranking, order);
        // One clear outlier goes without trying the others (the common case, and cheap). Not
        // the highest of several, however far out: a liar's neighbour can score above it.
        let (removal, carried) = if scores[order[0]] >= CLEAR && scores[order[1]] <= 1.0 {
            (order[0], None)
        } else {
            // Which to remove is judged on raw residuals: removing a liar lowers its
            // neighbours' residuals by what it had added to them, which the gap's scale would
            // partly hide (measured: a few percent more liars found at A = 1, as many at A = 2, 3).
            let candidates = &order[..CANDIDATES.min(order.len())];
            let chosen = calibration.choose_removal(&loo, &keep, (order, candidates), prepared, trials, buffers);
            (candidates[chosen], Some(chosen))
        };
        removed.push(keep.remove(removal));
        match carried {
            Some(chosen) => {
                // The winner's trial becomes the pass; the pass's buffers, a trial's.
                let Trial { sums, scores: trial } = std::mem::take(&mut trials[chosen]);
                let next = loo.without(removal, Some(sums), &mut buffers.pool);
                let sums = std::mem::replace(&mut loo, next).into_sums(&mut buffers.pool);
                trials[chosen] = Trial { sums, scores: std::mem::replace(&mut scores, trial) };
                calibration.rescore_gaps(&keep, &loo, &mut scores, prepared, buffers);
            }
            None => {
                let next = loo.without(removal, None, &mut buffers.pool);
                std::mem::replace(&mut loo, next).recycle(&mut buffers.pool);
                scores = calibration.scores_of(&keep, &loo, prepared, buffers);
            }
        }
    }
    // Nothing removed, nothing to refine, restore or reconsider: no copy of `keep` either (the
    // common, honest group).
    let settled_on = (!removed.is_empty()).then(|| keep.clone());
    if !settled {
        refine(calibration, (code, group), prepared, scores, (&mut keep, &mut removed), buffers);
    }
    let against = restore(calibration, (code, group), prepared, (&mut keep, &mut removed), buffers);
    // The loop's last pass is still `keep`'s unless refining or restoring changed it.
    let pass = (settled_on.as_ref() == Some(&keep)).then_some(&loo);
    reconsider(calibration, (code, group), prepared, (&mut keep, &mut removed), (budget, &against, pass), buffers);
    loo.recycle(&mut buffers.pool);
    removed.sort_unstable();
    removed
}

/// Reconsiders the removals together, once the steps above have settled on them: of the
/// removal sets drawn from the answers in doubt, the one that explains the group best, its
/// kept answers' total raw score plus [`REMOVAL_COST`] per answer removed the lowest.
///
/// One removal at a time stops as soon as every kept score is below its threshold, and with
/// two liars that can happen after an honest neighbour of one is removed in its place: the
/// neighbour, predicted from the liar, scored highest, and the liar, now judged across the
/// gap, scores below its threshold. Taken together, the liars' removal leaves the rest more
/// honest-looking than the neighbour's does. Each kept answer is scored here on its raw
/// residual, not on the gap's scale: on that scale an answer next to a removed one is cheap
/// to keep, which is what let the neighbour's removal pass. Measured on the embedded LeNet-5's
/// probabilities under `rotate` at `A = 2` (README, "Liars that keep an honest answer's
/// profile"): honest answers removed 0.024 -> 0.010, liars found 0.83 -> 0.90.
///
/// A group is looked at only if one of its removed answers does not stand clear: its raw
/// score against the kept ones (`against`, as [`restore`] left them) under [`CLEAR_RATIO`]
/// times the highest raw score of the kept ones within [`NEIGHBOURHOOD`] places of it (a
/// liar's stands far above its honest neighbours'; an honest answer removed beside a liar
/// kept, or for no reason but chance, does not). That costs a few scores from `pass`
/// (`keep`'s leave-one-out pass, where the caller still has it).
fn reconsider(
    calibration: &Calibration,
    (code, group): (&Code, &[f64]),
    prepared: &Prepared,
    (keep, removed): (&mut Vec<usize>, &mut Vec<usize>),
    (budget, against, pass): (usize, &[Against], Option<&Pass>),
    buffers: &mut Buffers,
) {
    if removed.is_empty() {
        return;
    }
    let in_doubt = match pass {
        None => true,
        Some(loo) => removed.iter().zip(against).any(|(&r, own)| {
            let at = keep.partition_point(|&k| k < r);
            let Buffers { residual, scratch, .. } = &mut *buffers;
            let near = (at.saturating_sub(NEIGHBOURHOOD)..(at + NEIGHBOURHOOD).min(keep.len()))
                .map(|j| calibration.score(keep[j], 0, loo.residual(j, residual), prepared, scratch))
                .fold(0.0, f64::max);
            own.raw.is_nan() || own.raw < CLEAR_RATIO * near
        }),
    };
    if !in_doubt {
        return;
    }
    let mut judged: Vec<usize> = keep.iter().chain(removed.iter()).copied().collect();
    judged.sort_unstable();
    let base = calibration.leave_one_out(code, group, &judged, &mut buffers.pool);
    let chosen = match &base {
        Pass::Learned(conditional) => {
            best_removals(calibration, conditional, (&judged, removed), budget, prepared, buffers)
        }
        // A calibration written before the learnt predictor: its groups stay as located.
        Pass::Berrut(_) => None,
    };
    base.recycle(&mut buffers.pool);
    if let Some(chosen) = chosen {
        keep.clear();
        keep.extend(judged.iter().copied().filter(|w| !chosen.contains(w)));
        *removed = chosen;
    }
}

/// [`reconsider`]'s search, on the leave-one-out pass of every answer `judged` (sorted, the
/// kept and the `removed` ones): each choice of at most `budget` removals (and one more than
/// stand) among the removed ones, their nearest kept neighbours and the kept answers with the
/// highest raw scores (as many as the budget left and [`DOUBT_MARGIN`] more, [`POOL_MAX`] in
/// all), the rows of each choice left out of the pass at once; every kept answer scored until
/// the total cannot beat the best so far. Returns the best choice if it is not `removed`.
fn best_removals(
    calibration: &Calibration,
    conditional: &Conditional,
    (judged, removed): (&[usize], &[usize]),
    budget: usize,
    prepared: &Prepared,
    buffers: &mut Buffers,
) -> Option<Vec<usize>> {
    let cost = |total: f64, removals: usize| total + REMOVAL_COST * removals as f64;
    let mut standing: Vec<usize> = removed.iter().map(|w| judged.binary_search(w).expect("a judged worker")).collect();
    standing.sort_unstable();
    let mut left_out = LeftOut::default();
    if !conditional.leave_out(&standing, &mut left_out) {
        return None;
    }
    let mut raw = vec![f64::NAN; judged.len()];
    let mut order: Vec<usize> = (0..judged.len()).filter(|j| !standing.contains(j)).collect();
    for &j in &order {
        raw[j] = raw_score_leaving_out(calibration, conditional, &left_out, (judged, j), prepared, buffers);
    }
    let current = cost(order.iter().map(|&j| raw[j]).sum(), standing.len());
    order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]));
    let neighbours = standing.iter().flat_map(|&j| [j.checked_sub(1), Some(j + 1).filter(|&k| k < judged.len())]);
    let suspects = order.iter().copied().take(budget.saturating_sub(standing.len()) + DOUBT_MARGIN);
    // The removals as they stand lead the pool.
    let mut pool = standing.clone();
    for j in neighbours.flatten().chain(suspects) {
        if !pool.contains(&j) {
            pool.push(j);
        }
    }
    pool.truncate(POOL_MAX);
    let mut best: Option<(f64, Vec<usize>)> = None;
    for removals in subsets(pool.len(), budget.min(standing.len() + 1).min(pool.len())) {
        if removals.len() == standing.len() && removals.iter().enumerate().all(|(i, &r)| i == r) {
            continue;
        }
        let mut chosen: Vec<usize> = removals.iter().map(|&i| pool[i]).collect();
        chosen.sort_unstable();
        let best_cost = best.as_ref().map_or(current, |b| b.0);
        let bound = best_cost - cost(0.0, chosen.len());
        if judged.len() - chosen.len() < 3 || bound <= 0.0 {
            continue;
        }
        if !conditional.leave_out(&chosen, &mut left_out) {
            continue;
        }
        // The answers returning first, then the highest scorers: they reach the bound soonest.
        let returning = standing.iter().copied().filter(|j| !chosen.contains(j));
        let visit = returning.chain(order.iter().copied().filter(|j| !chosen.contains(j)));
        let mut total = 0.0;
        for j in visit {
            total += raw_score_leaving_out(calibration, conditional, &left_out, (judged, j), prepared, buffers);
            if total >= bound {
                break;
            }
        }
        if total < bound {
            best = Some((cost(total, chosen.len()), chosen));
        }
    }
    best.map(|(_, chosen)| chosen.into_iter().map(|j| judged[j]).collect())
}

/// The raw score of `judged[j]` with `left_out`'s rows left out of `conditional`, the pass of
/// `judged`.
fn raw_score_leaving_out(
    calibration: &Calibration,
    conditional: &Conditional,
    left_out: &LeftOut,
    (judged, j): (&[usize], usize),
    prepared: &Prepared,
    buffers: &mut Buffers,
) -> f64 {
    let Buffers { residual, scratch, .. } = buffers;
    let scale = conditional.unscaled_leaving_out(left_out, j, residual);
    calibration.score(judged[j], 0, Residual { values: residual, scale }, prepared, scratch)
}

/// Every subset of `0..n` of at most `most` elements, the empty one included, as sorted
/// index lists.
fn subsets(n: usize, most: usize) -> Vec<Vec<usize>> {
    let mut all = vec![Vec::new()];
    let mut start = 0;
    for _ in 0..most {
        let end = all.len();
        for s in start..end {
            let from = all[s].last().map_or(0, |&l| l + 1);
            for i in from..n {
                let mut next = all[s].clone();
                next.push(i);
                all.push(next);
            }
        }
        start = end;
    }
    all
}

/// A removed answer's score were it kept: in the gap class it would be in, and raw.
#[derive(Clone, Copy, Debug)]
struct Against {
    gaps: f64,
    raw: f64,
}

/// What a removal costs [`reconsider`], in thresholds: a set of removals is chosen over one
/// fewer only where it lowers the kept answers' total raw score by more. Chosen with a wider
/// search (every group, more answers in doubt) at the least `N` on MNIST logits (`eval
/// --byzantine 1,2,3 --k 12 --queries 4800`): 1.25 found as many liars as the steps before it
/// or more under every attack but Gaussian-10 at `A = 1` (0.978 -> 0.975), and removed fewer
/// honest answers with nobody lying (0.005-0.006 -> 0.003); 1.5 removed 0.002 but found fewer
/// targeted and Gaussian-10 liars (0.976 -> 0.969, 0.970 -> 0.963 at `A = 2`); 2 removed
/// almost none and found 0.94-0.96 of them.
const REMOVAL_COST: f64 = 1.25;

/// How many kept answers beyond the budget left [`reconsider`] holds in doubt.
const DOUBT_MARGIN: usize = 2;

/// A removal is clear to [`reconsider`] when the answer's raw score against the kept ones is
/// this many times the highest of the kept answers' within [`NEIGHBOURHOOD`] places of it.
/// The price of looking at more groups (`cargo bench --bench locate -- calibrated`, sign
/// flips; LeNet-5 under `rotate` at `A = 2`, honest answers removed): 6, 86 ms and 0.0116; 8,
/// 88 ms and 0.0103; 10, 101 ms and 0.0097; every group with a removal, 233 ms and 0.0084.
const CLEAR_RATIO: f64 = 8.0;

/// How many kept answers on either side of a removed one [`reconsider`] compares it with.
const NEIGHBOURHOOD: usize = 2;

/// The most answers [`reconsider`] holds in doubt: it tries every choice of them up to the
/// budget (at most 93 for `A = 3`).
const POOL_MAX: usize = 8;

/// Puts back, one at a time, each removed answer that the kept ones explain: below its
/// threshold when judged with them, and raising no kept score above both its threshold and
/// what it was. A removal made while a liar was still in the group (its neighbours' residuals
/// raised by it) is then undone once the liar is gone. Returns each answer left removed's
/// scores against the kept ones (infinite for an answer atypical on its own).
fn restore(
    calibration: &Calibration,
    (code, group): (&Code, &[f64]),
    prepared: &Prepared,
    (keep, removed): (&mut Vec<usize>, &mut Vec<usize>),
    buffers: &mut Buffers,
) -> Vec<Against> {
    loop {
        // Its own score against the kept answers first (one prediction, where the full check
        // is a pass over the group): a liar rarely gets past it.
        let against: Vec<Against> = removed
            .iter()
            .map(|&w| match calibration.atypical(prepared, w) {
                true => Against { gaps: f64::INFINITY, raw: f64::INFINITY },
                false => calibration.score_against((code, group), prepared, (keep, w), buffers),
            })
            .collect();
        let mut candidates: Vec<(f64, usize)> =
            against.iter().enumerate().filter(|(_, a)| a.gaps <= 1.0).map(|(r, a)| (a.gaps, r)).collect();
        if candidates.is_empty() {
            return against;
        }
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0));
        let before = calibration.pass_scores(code, group, keep, prepared, buffers);
        let explained = candidates.into_iter().find(|&(_, r)| {
            let mut trial = keep.clone();
            let at = insert_sorted(&mut trial, removed[r]);
            let scores = calibration.pass_scores(code, group, &trial, prepared, buffers);
            let others = scores[..at].iter().chain(&scores[at + 1..]);
            scores[at] <= 1.0 && others.zip(&before).all(|(&s, &b)| s <= b.max(1.0))
        });
        let Some((_, r)) = explained else { return against };
        insert_sorted(keep, removed.remove(r));
    }
}

/// The indices of `scores`, highest score first, into `order`; `keys` is scratch. Each index
/// travels with its score in one integer, so the sort compares integers where sorting indices
/// looks both scores up: the score's bits in `f64::total_cmp`'s order, the lowest
/// [`INDEX_BITS`] of them replaced by the index. Scores that differ only there (under a part
/// in 10^12) count as ties; ties go lowest index first, as a stable sort leaves them (measured:
/// 5 % of locating the sign flips of `cargo bench --bench locate`, its groups timed best of
/// 20, against sorting indices).
fn rank_descending(scores: &[f64], keys: &mut Vec<u64>, order: &mut Vec<usize>) {
    let mask = (1u64 << INDEX_BITS) - 1;
    // `total_cmp`'s order as unsigned integers, reversed (the highest first).
    let descending = |score: f64| {
        let bits = score.to_bits();
        !(if bits >> 63 == 1 { !bits } else { bits | 1 << 63 })
    };
    keys.clear();
    keys.extend(scores.iter().enumerate().map(|(i, &s)| (descending(s) & !mask) | i as u64));
    keys.sort_unstable();
    order.clear();
    order.extend(keys.iter().map(|&k| (k & mask) as usize));
}

/// The bits of a [`rank_descending`] key that hold the index: enough for the most responders
/// a code has.
const INDEX_BITS: u32 = 12;
const _: () = assert!(1 << INDEX_BITS >= crate::MAX_WORKERS);

/// Inserts `w` into the sorted `workers`; returns where it went.
fn insert_sorted(workers: &mut Vec<usize>, w: usize) -> usize {
    let at = workers.partition_point(|&k| k < w);
    workers.insert(at, w);
    at
}

/// Swaps removed responders back for kept ones while that makes the group look more honest
/// (a lower sum of the kept responders' scores, for the same number removed). One removal at
/// a time can go wrong with several liars: an honest neighbour of two liars may score above
/// both (its residual is predicted from them), be removed first, and leave a liar standing
/// once the budget is spent. Judged against the rest, the wrongly removed answer then fits and
/// the liar does not. Two neighbouring liars can leave two honest answers removed, neither
/// worth swapping back alone (each returns next to a liar still kept): when no single swap
/// helps, pairs are tried. Only groups with a score above its threshold left are looked at
/// (`scores`: `keep`'s, from the last pass).
fn refine(
    calibration: &Calibration,
    (code, group): (&Code, &[f64]),
    prepared: &Prepared,
    mut scores: Vec<f64>,
    (keep, removed): (&mut Vec<usize>, &mut [usize]),
    buffers: &mut Buffers,
) {
    // An answer atypical on its own scores above its threshold whoever else is kept, but it
    // is swapped back all the same when a kept one scores higher still: with more answers
    // past their thresholds than the budget (an honest one far out, a few in a thousand, and
    // `A` liars), the budget goes to the worst.
    let (mut order, mut ranking) = (Vec::new(), Vec::new());
    for _ in 0..2 * removed.len() {
        if scores.iter().all(|&s| s <= 1.0) {
            return;
        }
        let total: f64 = scores.iter().sum();
        rank_descending(&scores, &mut ranking, &mut order);
        let top = &order[..CANDIDATES.min(order.len())];
        // Swapping `outs` (indices into `keep`) for as many removed answers, every such
        // choice: a removed answer scoring above every answer it would replace, judged against
        // the others, is not tried (one prediction, where trying is a pass over the group); a
        // trial stops scoring once it cannot beat the best so far (or `total`).
        let mut best: Option<Swap> = None;
        let mut try_swap = |outs: &[usize], best: &mut Option<Swap>| {
            let others: Vec<usize> =
                keep.iter().enumerate().filter(|(j, _)| !outs.contains(j)).map(|(_, &w)| w).collect();
            let highest = outs.iter().map(|&o| scores[o]).fold(0.0, f64::max);
            let worth: Vec<usize> = (0..removed.len())
                .filter(|&r| {
                    calibration.score_against((code, group), prepared, (&others, removed[r]), buffers).gaps < highest
                })
                .collect();
            let choices: Vec<Vec<usize>> = match outs.len() {
                1 => worth.iter().map(|&r| vec![r]).collect(),
                _ => worth
                    .iter()
                    .enumerate()
                    .flat_map(|(i, &a)| worth[i + 1..].iter().map(move |&b| vec![a, b]))
                    .collect(),
            };
            for backs in choices {
                let mut trial = others.clone();
                for &r in &backs {
                    insert_sorted(&mut trial, removed[r]);
                }
                let bound = best.as_ref().map_or(total, |b| b.total);
                // The returning answers and the highest scorers first: they reach the bound soonest.
                let returning = backs.iter().map(|&r| removed[r]);
                let visit = returning.chain(order.iter().filter(|j| !outs.contains(j)).map(|&j| keep[j]));
                let Some(trial_scores) =
                    calibration.scores_within(code, group, &trial, prepared, (visit, bound), buffers)
                else {
                    continue;
                };
                let after: f64 = trial_scores.iter().sum();
                if after < bound {
                    *best = Some(Swap { total: after, outs: outs.to_vec(), backs, scores: trial_scores });
                }
            }
        };
        for &out in top {
            try_swap(&[out], &mut best);
        }
        if best.is_none() {
            for (i, &first) in top.iter().enumerate() {
                for &second in &top[i + 1..] {
                    try_swap(&[first, second], &mut best);
                }
            }
        }
        let Some(Swap { outs, backs, scores: trial_scores, .. }) = best else { return };
        let mut leaving: Vec<usize> = outs.iter().map(|&o| keep[o]).collect();
        keep.retain(|w| !leaving.contains(w));
        for r in backs {
            let back = std::mem::replace(&mut removed[r], leaving.pop().expect("as many out as back"));
            insert_sorted(keep, back);
        }
        // The trial's pass is the new `keep`'s.
        scores = trial_scores;
    }
}

/// A swap [`refine`] tried: `keep`'s `outs` (indices) for `removed`'s `backs` (indices), the
/// kept scores' sum after it, and those scores.
struct Swap {
    total: f64,
    outs: Vec<usize>,
    backs: Vec<usize>,
    scores: Vec<f64>,
}

/// A score this many times the threshold is clear: such an answer is removed without trying
/// the others when every other responder is below its own threshold, and first of all when
/// its own row alone scores it so.
const CLEAR: f64 = 2.0;

/// The joint test's share of the false-alarm budget; the consistency test has the rest.
const JOINT_SHARE: f64 = 0.8;

/// How many of the highest scorers are tried as the one to remove (a liar's neighbour may
/// score above it).
const CANDIDATES: usize = 3;

/// How many rows the race's leader scores before the leader is chosen again: scores in a row
/// are independent, so the processor overlaps them, where one at a time each waits on the
/// choice before it (measured on `cargo bench --bench locate`'s sign flips: 8 % faster than
/// one; 2, 3, 6 and 8 between).
const STRIDE: usize = 4;

/// Collects honest groups and fits a [`Calibration`]: the predictor first, then every
/// position's features under it. Offline it keeps every calibration group; online
/// (`capacity`) the most recent ones, so the fit follows the traffic.
#[derive(Clone, Debug)]
pub struct CalibrationBuilder {
    code: Code,
    /// Sorts rows of `row_len` values (the typicality feature).
    network: SortingNetwork,
    row_len: usize,
    capacity: usize,
    groups: usize,
    /// Chosen from the first group observed.
    representation: Option<Representation>,
    /// The groups kept: their rows as the representation compares them (`[N, row_len]`) and
    /// which workers answered with a row that can be honest (sorted).
    history: VecDeque<(Vec<f64>, Vec<usize>)>,
    /// Per position, the groups kept that it answered.
    samples: Vec<usize>,
}

impl CalibrationBuilder {
    /// A builder for `code` with rows of `row_len` values keeping at most `capacity` groups
    /// (`usize::MAX`: all).
    pub fn new(code: &Code, row_len: usize, capacity: usize) -> Result<Self> {
        if row_len == 0 {
            return Err(Error::EmptyRows { what: "calibration rows" });
        }
        Ok(CalibrationBuilder {
            code: code.clone(),
            network: SortingNetwork::new(row_len),
            row_len,
            capacity,
            groups: 0,
            representation: None,
            history: VecDeque::new(),
            samples: vec![0; code.params().workers()],
        })
    }

    /// Adds the honest groups of `outputs` (`[B, N, row_len]`, `masks` `[B, N]` saying who
    /// answered). Rows with a NaN or an infinity are skipped, never learnt; so are rows that
    /// are not probability vectors once the first group has shown that honest answers are.
    pub fn observe<T: Element>(&mut self, outputs: &[T], masks: &[bool]) -> Result<()> {
        let n = self.code.params().workers();
        let row_len = self.row_len;
        let groups = whole_groups("calibration outputs", outputs.len(), n, row_len)?;
        expect_len("calibration masks", masks.len(), groups * n)?;
        self.code.check_masks(masks)?;
        for (group, mask) in outputs.chunks_exact(n * row_len).zip(masks.chunks_exact(n)) {
            let values = super::widen(group);
            let row = |w: usize| &values[w * row_len..(w + 1) * row_len];
            let finite: Vec<usize> = (0..n).filter(|&w| mask[w] && row(w).iter().all(|v| v.is_finite())).collect();
            if finite.len() < 3 {
                continue;
            }
            let representation =
                *self.representation.get_or_insert_with(|| Representation::of(finite.iter().map(|&w| row(w)), row_len));
            let (values, possible) = representation.apply(&values, row_len);
            let keep: Vec<usize> = finite.into_iter().filter(|&w| possible[w]).collect();
            if keep.len() < 3 {
                continue;
            }
            if self.capacity != usize::MAX && self.history.len() >= self.capacity {
                let (_, dropped) = self.history.pop_front().expect("a full history");
                dropped.iter().for_each(|&w| self.samples[w] -= 1);
            }
            keep.iter().for_each(|&w| self.samples[w] += 1);
            self.history.push_back((values.into_owned(), keep));
            self.groups += 1;
        }
        Ok(())
    }

    /// Each responder's residual with up to `GAP_LEVELS - 1` of its nearest responders on
    /// each side left out as well, its squared norm filed under the gap class that leaves.
    fn gap_samples(&self, predictor: &Predictor, values: &[f64], keep: &[usize], gaps: &mut [Vec<f64>]) {
        let (n, row_len) = (self.code.params().workers(), self.row_len);
        let mut residual = vec![0.0; row_len];
        let mut others = Vec::with_capacity(keep.len());
        let mut solve = Solve::default();
        for (j, &w) in keep.iter().enumerate() {
            for left in 0..GAP_LEVELS.min(j + 1) {
                for right in 0..GAP_LEVELS.min(keep.len() - j) {
                    others.clear();
                    others.extend(keep[..j - left].iter().chain(&keep[j + 1 + right..]));
                    if others.len() < 2 {
                        continue;
                    }
                    let gap = gap_class((j > left).then(|| keep[j - left - 1]), w, keep.get(j + 1 + right).copied(), n);
                    conditional::residual_against(predictor, values, row_len, (&others, w), &mut residual, &mut solve);
                    gaps[w * GAP_LEVELS * GAP_LEVELS + gap].push(residual.iter().map(|r| r * r).sum());
                }
            }
        }
    }

    /// Honest groups observed so far.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Whether every position has enough samples for [`fit`](Self::fit).
    pub fn ready(&self) -> bool {
        self.short_positions().is_empty()
    }

    /// The positions with too few samples for [`fit`](Self::fit), increasing: in traffic, a
    /// worker whose answers are never among the honest ones (one that always lies).
    pub fn short_positions(&self) -> Vec<usize> {
        let needed = SAMPLES_PER_FEATURE * feature_len(self.row_len) + 2;
        (0..self.samples.len()).filter(|&w| self.samples[w] < needed).collect()
    }

    /// Fits every position; `false_alarm` in `(0, 0.5)`.
    pub fn fit(&self, false_alarm: f64) -> Result<Calibration> {
        self.fit_excluding(false_alarm, &[])
    }

    /// Fits every position but the `suspected` ones (increasing), learning nothing of them:
    /// the calibration removes their answers first ([`Calibration::suspected`]). For traffic
    /// in which those workers never gave an honest answer, the [`short_positions`] of a
    /// worker that always lies: the others are still judged on what was learnt of them, where
    /// a calibration of every position would wait for honest answers that never come.
    ///
    /// [`short_positions`]: Self::short_positions
    pub fn fit_excluding(&self, false_alarm: f64, suspected: &[usize]) -> Result<Calibration> {
        if !(false_alarm > 0.0 && false_alarm < 0.5) {
            return Err(Error::InvalidFalseAlarm { false_alarm });
        }
        let (n, row_len) = (self.code.params().workers(), self.row_len);
        check_suspects(suspected, n)?;
        let (f, t) = (feature_len(row_len), typicality_len(row_len));
        if self.history.is_empty() {
            return Err(Error::TooFewCalibrationSamples {
                position: 0,
                samples: 0,
                needed: SAMPLES_PER_FEATURE * f + 2,
            });
        }
        // The suspected positions' answers, were any kept, are not learnt from.
        let kept: Vec<Vec<usize>> = self
            .history
            .iter()
            .map(|(_, keep)| keep.iter().copied().filter(|w| suspected.binary_search(w).is_err()).collect())
            .collect();
        let history = self
            .history
            .iter()
            .zip(&kept)
            .map(|((values, _), keep)| (values.as_slice(), keep.as_slice()))
            .filter(|(_, keep)| keep.len() >= 3);
        let predictor = Predictor::learn(history.clone(), (n, row_len), suspected)?;
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut gaps: Vec<Vec<f64>> = vec![Vec::new(); n * GAP_LEVELS * GAP_LEVELS];
        let mut pool = Pool::default();
        for (values, keep) in history {
            let pass = Conditional::new(&predictor, values, row_len, keep, &mut pool);
            let residuals = pass.residuals();
            pass.recycle(&mut pool);
            for (&w, residual) in keep.iter().zip(residuals.chunks_exact(row_len)) {
                let start = samples[w].len();
                samples[w].resize(start + f, 0.0);
                typicality(&values[w * row_len..(w + 1) * row_len], &self.network, &mut samples[w][start..start + t]);
                samples[w][start + t..].copy_from_slice(residual);
            }
            self.gap_samples(&predictor, values, keep, &mut gaps);
        }
        let positions = samples
            .iter()
            .enumerate()
            .map(|(w, samples)| match suspected.binary_search(&w) {
                Ok(_) => Ok(Position::unfitted(f, row_len)),
                Err(_) => Position::fit(w, samples, f, row_len, false_alarm),
            })
            .collect::<Result<Vec<_>>>()?;
        let p = self.code.params();
        Ok(Calibration {
            queries: p.queries(),
            workers: p.workers(),
            nodes: p.nodes(),
            layout: p.layout(),
            privacy: p.privacy(),
            masks: p.masks(),
            row_len,
            representation: self.representation.unwrap_or_default(),
            false_alarm,
            groups: self.groups,
            suspected: suspected.to_vec(),
            positions,
            gap_scales: gap_scales(&gaps),
            predictor: Some(predictor),
            inverse_differences: Memo::default(),
            all_terms: Memo::default(),
            network: Memo::default(),
        })
    }
}

/// Whether `suspected` are distinct positions of `workers`, increasing.
fn check_suspects(suspected: &[usize], workers: usize) -> Result<()> {
    if suspected.is_sorted_by(|a, b| a < b) && suspected.last().is_none_or(|&w| w < workers) {
        Ok(())
    } else {
        Err(Error::InvalidSuspects { suspected: suspected.to_vec(), workers })
    }
}

/// Per position and gap class, the factor honest residuals grow by over the position's usual
/// class (its median squared norm against the usual one's, square-rooted), from `gaps` (per
/// position and class, squared norms); a class seen too rarely to tell takes the largest
/// factor of its position.
fn gap_scales(gaps: &[Vec<f64>]) -> Vec<f64> {
    let classes = GAP_LEVELS * GAP_LEVELS;
    let mut scales = vec![1.0; gaps.len()];
    for (position, stores) in gaps.chunks_exact(classes).enumerate() {
        // Class 0 (both neighbours answered) unless the traffic rarely had everyone answer.
        let usual = match &stores[0] {
            full if full.len() >= MIN_GAP_SAMPLES => full,
            _ => match stores.iter().rev().max_by_key(|s| s.len()) {
                Some(most) if most.len() >= MIN_GAP_SAMPLES => most,
                _ => continue,
            },
        };
        let base = median(usual.iter().copied());
        if base.is_nan() || base <= 0.0 {
            continue;
        }
        let own = &mut scales[position * classes..(position + 1) * classes];
        let mut largest = 1.0f64;
        for (scale, store) in own.iter_mut().zip(stores) {
            if store.len() >= MIN_GAP_SAMPLES {
                *scale = (median(store.iter().copied()) / base).sqrt();
                largest = largest.max(*scale);
            } else {
                *scale = f64::NAN;
            }
        }
        own.iter_mut().filter(|s| s.is_nan()).for_each(|s| *s = largest);
    }
    scales
}

/// A gap class needs this many samples before its scale is trusted.
const MIN_GAP_SAMPLES: usize = 20;

/// The median (upper) of `values`.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    quantile(&values, 0.5)
}

/// Each of `m` samples' squared Mahalanobis distance under the mean and covariance of the
/// others, from its distance `d2` under those of all `m` (exact for a full covariance; the
/// ridge aside). Fitted on few samples, a Gaussian sits closer to them than to the next
/// answer from the same source: at 100 calibration groups a threshold read off the samples'
/// own distances removed 4.8-7.0 % of honest answers, against 0.2-0.4 % at 1000 (README,
/// "Byzantine workers"). With `u = x_i - mean` and the scatter `W = (m - 1) S`, the others' mean is `u m /
/// (m - 1)` away and their scatter `W - m / (m - 1) u u^T`, so by Sherman-Morrison the distance
/// is `m^2 (m - 2) d2 / ((m - 1) ((m - 1)^2 - m d2))`. `d2` never exceeds `(m - 1)^2 / m`, where
/// the sample is alone in some direction and the others say nothing of it; its leverage `m d2
/// / (m - 1)^2` is taken as at most `1 - 1 / m`, so that the threshold stays finite.
fn held_out(d2: &[f64]) -> Vec<f64> {
    let m = d2.len() as f64;
    if m < 3.0 {
        return d2.to_vec();
    }
    let gain = m * m * (m - 2.0) / (m - 1.0);
    let bound = (m - 1.0) * (m - 1.0);
    d2.iter().map(|&d| gain * d / (bound - m * d).max(bound / m)).collect()
}

/// The `level` quantile of `values`: read off them where at least one lies beyond it, else
/// extrapolated from their largest tenth (at least [`TAIL_SAMPLES`]) as an exponential tail,
/// which squared distances have (a chi-squared one's). Read off a hundred samples, a
/// quantile at 0.997 is their largest, which one honest answer in a hundred exceeds.
fn tail_quantile(values: &[f64], level: f64) -> f64 {
    let m = values.len();
    let beyond = (1.0 - level) * m as f64;
    // An overflowed distance (infinite) says nothing of the tail's shape.
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if beyond >= 1.0 || sorted.len() <= TAIL_SAMPLES {
        return quantile(values, level);
    }
    sorted.sort_by(f64::total_cmp);
    let finite = sorted.len();
    let k = (finite / 10).max(TAIL_SAMPLES);
    let base = sorted[finite - 1 - k];
    // The mean excess over the base is the exponential's scale; the base is exceeded by `k`
    // of the `m` samples, the quantile by `beyond` of them.
    let scale = sorted[finite - k..].iter().map(|v| v - base).sum::<f64>() / k as f64;
    base + scale * (k as f64 / beyond).ln()
}

/// The fewest samples [`tail_quantile`] extrapolates from.
const TAIL_SAMPLES: usize = 5;

/// The `q` quantile (nearest rank) of `values`; NaN sorts last.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    use rand::{Rng, SeedableRng};

    #[test]
    fn subsets_are_every_choice_of_at_most_so_many_once() {
        let all = subsets(5, 3);
        // 1 + 5 + 10 + 10.
        assert_eq!(all.len(), 26);
        assert!(all.iter().all(|s| s.len() <= 3 && s.windows(2).all(|w| w[0] < w[1]) && s.iter().all(|&i| i < 5)));
        let mut distinct = all.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), all.len());
        assert_eq!(subsets(2, 5), vec![vec![], vec![0], vec![1], vec![0, 1]]);
        assert_eq!(subsets(0, 2), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn held_out_distances_are_those_under_the_other_samples_fit() {
        // 40 correlated samples of 5 features: each one's distance under the mean and
        // covariance of the other 39, computed directly, against the closed form.
        let (m, f) = (40, 5);
        let raw = values(11, m * f);
        let samples: Vec<Vec<f64>> = raw
            .chunks_exact(f)
            .map(|x| (0..f).map(|j| x[j] + 0.5 * x[(j + 1) % f] + 3.0 * j as f64).collect())
            .collect();
        let rows: Vec<&[f64]> = samples.iter().map(Vec::as_slice).collect();
        let all = Gaussian::moments(&rows, f, 0).unwrap();
        let within: Vec<f64> = rows.iter().map(|r| all.distance(r)).collect();
        let closed = held_out(&within);
        for (i, row) in rows.iter().enumerate() {
            let others: Vec<&[f64]> = rows.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, r)| *r).collect();
            let direct = Gaussian::moments(&others, f, 0).unwrap().distance(row);
            assert!((closed[i] - direct).abs() <= 1e-6 * direct, "sample {i}: {} against {direct}", closed[i]);
            assert!(closed[i] > within[i], "a sample is further from a fit without it");
        }
        // A sample alone in some direction (leverage 1) gets a large, finite distance.
        let lone = held_out(&[(39.0f64 * 39.0) / 40.0, 1.0, 2.0]);
        assert!(lone[0].is_finite() && lone[0] > lone[2]);
    }

    #[test]
    fn a_quantile_past_the_samples_is_extrapolated_from_their_tail() {
        // Exponential samples (scale 2, a chi-squared tail's): the quantiles 0.9999 and
        // 0.99 of 300 evenly spread ones. The first, past every sample, is extrapolated to
        // about the true 18.4 (the largest sample is 11.4); the second is read off them.
        let samples: Vec<f64> = (0..300).map(|i| -2.0 * (1.0 - (i as f64 + 0.5) / 300.0).ln()).collect();
        let truth = -2.0 * (1e-4f64).ln();
        let far = tail_quantile(&samples, 0.9999);
        assert!((far - truth).abs() < 0.05 * truth, "{far} against {truth}");
        assert_eq!(tail_quantile(&samples, 0.99), quantile(&samples, 0.99));
        // Too few samples to fit a tail: their largest.
        assert_eq!(tail_quantile(&[1.0, 3.0, 2.0], 0.9999), 3.0);
        // An overflowed distance is left out of the tail, not taken as its scale.
        let mut overflowed = samples.clone();
        overflowed[299] = f64::INFINITY;
        let without = tail_quantile(&overflowed, 0.9999);
        assert!(without.is_finite() && (without - truth).abs() < 0.1 * truth, "{without}");
    }

    /// Deterministic values in `[-1, 1)`.
    fn values(seed: u64, len: usize) -> Vec<f64> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// A code with `A = 2` and `stragglers` at the least `N`, and its honest answers (4
    /// outputs) to `groups` groups of random queries from `seed`, by a smooth nonlinear model
    /// (`[groups, N, 4]`).
    fn smooth_model(stragglers: usize) -> (Code, impl Fn(usize, u64) -> Vec<f64>) {
        smooth_model_of(stragglers, 4)
    }

    /// [`smooth_model`] with `row_len` outputs.
    fn smooth_model_of(stragglers: usize, row_len: usize) -> (Code, impl Fn(usize, u64) -> Vec<f64>) {
        use crate::params::{CodeParams, NodeFamily};
        let (k, a, dim) = (4, 2, 6);
        let n = CodeParams::workers_needed(k, stragglers, a);
        let params = CodeParams::builder(k, n).stragglers(stragglers).byzantine(a).nodes(NodeFamily::Authors);
        let code = Code::new(params.build().unwrap()).unwrap();
        let weights = values(7, row_len * dim);
        let coder = code.clone();
        let answers = move |groups: usize, seed: u64| -> Vec<f64> {
            let queries = values(seed, groups * k * dim);
            let coded = crate::cpu::encode_to_vec(&coder, &queries, dim).unwrap();
            let model = |x: &[f64]| -> Vec<f64> {
                weights
                    .chunks_exact(dim)
                    .map(|w| 3.0 * w.iter().zip(x).map(|(w, x)| w * x).sum::<f64>().tanh())
                    .collect()
            };
            coded.chunks_exact(dim).flat_map(model).collect()
        };
        (code, answers)
    }

    /// [`smooth_model`]'s code, a calibration learnt from 1500 of its honest groups, and
    /// `groups` of its answers with two sign-flipped liars each (`[groups, N, 4]`).
    fn attacked_groups(groups: usize) -> (Code, Calibration, Vec<f64>) {
        let (code, answers) = smooth_model(0);
        let (n, row_len) = (code.params().workers(), 4);
        let mut builder = CalibrationBuilder::new(&code, row_len, usize::MAX).unwrap();
        builder.observe(&answers(1500, 1), &vec![true; 1500 * n]).unwrap();
        let calibration = builder.fit(DEFAULT_FALSE_ALARM).unwrap();
        let mut attacked = answers(groups, 2);
        for (g, group) in attacked.chunks_exact_mut(n * row_len).enumerate() {
            for liar in [g % n, (g * 5 + 3) % n] {
                group[liar * row_len..(liar + 1) * row_len].iter_mut().for_each(|v| *v = -*v);
            }
        }
        (code, calibration, attacked)
    }

    #[test]
    fn the_race_removes_the_candidate_a_full_evaluation_of_each_would_and_leaves_its_pass() {
        let (code, calibration, attacked) = attacked_groups(60);
        let (n, row_len) = (code.params().workers(), calibration.row_len);
        let keep: Vec<usize> = (0..n).collect();
        let mut buffers = Buffers::new(row_len);
        let mut prepared = Prepared::default();
        for group in attacked.chunks_exact(n * row_len) {
            calibration.prepare(group, &keep, &vec![true; n], &mut prepared);
            let loo = calibration.leave_one_out(&code, group, &keep, &mut buffers.pool);
            let scores = calibration.scores_of(&keep, &loo, &prepared, &mut buffers);
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            let candidates = &order[..CANDIDATES];
            let mut trials: [Trial; CANDIDATES] = Default::default();
            let chosen =
                calibration.choose_removal(&loo, &keep, (&order, candidates), &prepared, &mut trials, &mut buffers);
            // Each candidate's removal evaluated in full, from a new pass without it.
            let passes: Vec<(Vec<usize>, Vec<f64>)> = candidates
                .iter()
                .map(|&c| {
                    let rest: Vec<usize> = keep.iter().copied().filter(|&w| w != keep[c]).collect();
                    let pass = loo.without(c, None, &mut buffers.pool);
                    let raw = (0..rest.len())
                        .map(|j| {
                            let residual = pass.residual(j, &mut buffers.residual);
                            calibration.score(rest[j], 0, residual, &prepared, &mut buffers.scratch)
                        })
                        .collect();
                    (rest, raw)
                })
                .collect();
            let totals: Vec<f64> = passes.iter().map(|(_, raw)| raw.iter().sum()).collect();
            let least = totals.iter().copied().fold(f64::INFINITY, f64::min);
            assert!(totals[chosen] <= least * (1.0 + 1e-9), "chose {chosen} of {totals:?}");
            for (trial, fresh) in trials[chosen].scores.iter().zip(&passes[chosen].1) {
                assert!((trial - fresh).abs() <= 1e-9 * fresh.max(1e-12), "trial {trial} vs pass {fresh}");
            }
        }
    }

    #[test]
    fn a_bounded_pass_gives_every_score_or_none_when_their_sum_reaches_the_bound() {
        let (code, calibration, attacked) = attacked_groups(20);
        let (n, row_len) = (code.params().workers(), calibration.row_len);
        let mut buffers = Buffers::new(row_len);
        let mut prepared = Prepared::default();
        for (g, group) in attacked.chunks_exact(n * row_len).enumerate() {
            // A responder set with a worker missing, visited in an order of its own.
            let keep: Vec<usize> = (0..n).filter(|&w| w != g % n).collect();
            calibration.prepare(group, &keep, &vec![true; n], &mut prepared);
            let full = calibration.pass_scores(&code, group, &keep, &prepared, &mut buffers);
            let total: f64 = full.iter().sum();
            let visit = || keep.iter().rev().copied();
            for bound in [total * 1.5, total * 1.0001, total, total * 0.5] {
                let within = calibration.scores_within(&code, group, &keep, &prepared, (visit(), bound), &mut buffers);
                match within {
                    // Up to rounding: the running sum adds in another order than the total
                    // (the caller compares the total itself).
                    Some(scores) => {
                        assert!(total < bound * (1.0 + 1e-12), "a bound of {bound} passed a total of {total}");
                        assert_eq!(scores, full);
                    }
                    None => assert!(total >= bound * (1.0 - 1e-12), "a total of {total} stopped at {bound}"),
                }
            }
        }
    }

    #[test]
    fn a_position_missing_from_the_groups_kept_is_short_until_enough_of_them_hold_it() {
        // One value per row: a feature of 3, so 8 samples per position; 10 groups kept.
        let code = Code::new(crate::CodeParams::builder(2, 6).stragglers(1).byzantine(1).build().unwrap()).unwrap();
        let mut builder = CalibrationBuilder::new(&code, 1, 10).unwrap();
        let groups = |missing: usize, count: usize| {
            let outputs: Vec<f32> = (0..count * 6).map(|i| (i % 7) as f32).collect();
            let masks: Vec<bool> = (0..count * 6).map(|i| i % 6 != missing).collect();
            (outputs, masks)
        };
        assert_eq!(builder.short_positions(), vec![0, 1, 2, 3, 4, 5]);
        let (outputs, masks) = groups(1, 12);
        builder.observe(&outputs, &masks).unwrap();
        assert_eq!(builder.short_positions(), vec![1]);
        assert!(!builder.ready());
        // The oldest groups make way: position 3 is now the one the groups kept lack.
        let (outputs, masks) = groups(3, 10);
        builder.observe(&outputs, &masks).unwrap();
        assert_eq!(builder.short_positions(), vec![3]);
    }

    #[test]
    fn a_position_never_answering_honestly_is_fitted_without_and_its_answers_removed_first() {
        // A straggler: traffic has groups without the worker that lies, to learn the others.
        let (code, answers) = smooth_model(1);
        let (n, row_len, never) = (code.params().workers(), 4, 3);
        // Traffic in which worker 3's answers are never among the honest ones.
        let mut masks = vec![true; 1500 * n];
        masks.chunks_exact_mut(n).for_each(|m| m[never] = false);
        let mut builder = CalibrationBuilder::new(&code, row_len, usize::MAX).unwrap();
        builder.observe(&answers(1500, 1), &masks).unwrap();
        assert_eq!(builder.short_positions(), [never]);
        assert!(matches!(builder.fit(DEFAULT_FALSE_ALARM), Err(Error::TooFewCalibrationSamples { position: 3, .. })));
        for bad in [vec![n], vec![4, 3], vec![3, 3]] {
            let error = builder.fit_excluding(DEFAULT_FALSE_ALARM, &bad).unwrap_err();
            assert!(matches!(error, Error::InvalidSuspects { .. }), "{bad:?}: {error}");
        }
        let calibration = builder.fit_excluding(DEFAULT_FALSE_ALARM, &[never]).unwrap();
        assert_eq!(calibration.suspected, [never]);
        calibration.check(&code, row_len).unwrap();
        // Files keep it (and files from before it have none).
        let read: Calibration = serde_json::from_str(&serde_json::to_string(&calibration).unwrap()).unwrap();
        assert_eq!(read.suspected, [never]);
        read.check(&code, row_len).unwrap();
        let locator = crate::Locator::Calibrated(std::sync::Arc::new(calibration.clone()));

        // It lies in every group, and one other worker in each: both removed.
        let groups = 300;
        let honest = answers(groups, 2);
        let mut attacked = honest.clone();
        let liar = |g: usize| (never + 1 + g * 5 % (n - 1)) % n;
        for (g, group) in attacked.chunks_exact_mut(n * row_len).enumerate() {
            for w in [never, liar(g)] {
                group[w * row_len..(w + 1) * row_len].iter_mut().for_each(|v| *v = -*v);
            }
        }
        let everyone = vec![true; groups * n];
        let location = crate::locate(&code, &locator, &attacked, row_len, &everyone).unwrap();
        let found = location.located.iter().enumerate().filter(|(g, l)| l.contains(&liar(*g))).count();
        assert!(location.located.iter().all(|l| l.contains(&never)), "the suspected position is always removed");
        assert!(found as f64 >= 0.9 * groups as f64, "the other liar found in {found} of {groups} groups");
        // Nobody else lying: the suspected position, and rarely an honest answer more (the
        // false alarms of a calibration of every position: under 1 %).
        let location = crate::locate(&code, &locator, &honest, row_len, &everyone).unwrap();
        assert!(location.located.iter().all(|l| l.contains(&never)));
        let more: usize = location.located.iter().map(|l| l.len() - 1).sum();
        assert!(
            more as f64 <= 0.01 * (groups * (n - 1)) as f64,
            "{more} honest answers of {} removed",
            groups * (n - 1)
        );

        // Filled in when missing, by the code's interpolant of the others: near the honest row.
        let mut missing = everyone.clone();
        missing.chunks_exact_mut(n).enumerate().for_each(|(g, m)| (m[never], m[liar(g)]) = (false, false));
        let mut filled = honest.clone();
        assert!(calibration.impute(&code, &mut filled, row_len, &missing).unwrap());
        let row = |v: &[f64], g: usize| v[(g * n + never) * row_len..(g * n + never + 1) * row_len].to_vec();
        let distance = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        let (error, size): (f64, f64) = (0..groups)
            .map(|g| (distance(&row(&filled, g), &row(&honest, g)), distance(&row(&honest, g), &[0.0; 4])))
            .fold((0.0, 0.0), |(e, s), (de, ds)| (e + de, s + ds));
        assert!(error < 0.2 * size, "imputed rows off by {error} against rows of size {size}");
    }

    #[test]
    fn vectorized_and_as_built_the_same_workers_are_located_with_the_same_scores_to_the_bit() {
        // Rows of 4 (the lanes' width) and of 10 (a classifier's, with a remainder), everyone
        // answering and one worker missing. Where the processor has no AVX2 both runs are the
        // build's own and agree trivially.
        for row_len in [4, 10] {
            let (code, answers) = smooth_model_of(1, row_len);
            let n = code.params().workers();
            let mut builder = CalibrationBuilder::new(&code, row_len, usize::MAX).unwrap();
            builder.observe(&answers(1500, 1), &vec![true; 1500 * n]).unwrap();
            let calibration = builder.fit(DEFAULT_FALSE_ALARM).unwrap();
            let mut attacked = answers(40, 2);
            let mut located = 0;
            for (g, group) in attacked.chunks_exact_mut(n * row_len).enumerate() {
                for liar in [g % n, (g * 5 + 3) % n] {
                    group[liar * row_len..(liar + 1) * row_len].iter_mut().for_each(|v| *v = -*v);
                }
                let workers: Vec<usize> = (0..n).filter(|&w| g % 2 == 0 || w != (g + 1) % n).collect();
                let run = || {
                    let located = suspects(&calibration, &code, group, &workers, 2, &mut Workspace::default());
                    (located, calibration.scores(&code, group, &workers))
                };
                let (vectorized, plain) = (run(), crate::vectorized::plain(run));
                assert_eq!(vectorized.0, plain.0, "rows of {row_len}, group {g}");
                let bits = |scores: &[f64]| scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&vectorized.1), bits(&plain.1), "rows of {row_len}, group {g}");
                located += vectorized.0.len();
            }
            // The groups exercised the removals, not only a first pass.
            assert!(located >= 40, "{located} removals in 40 groups");
        }
    }

    #[test]
    fn a_workspace_kept_from_group_to_group_locates_as_a_new_one_to_the_bit() {
        let (code, calibration, attacked) = attacked_groups(60);
        let (n, row_len) = (code.params().workers(), calibration.row_len);
        let mut kept = Workspace::default();
        let mut located = 0;
        for (g, group) in attacked.chunks_exact(n * row_len).enumerate() {
            // Responder sets of every size from all to three missing, so that the buffers
            // left by one group are larger or smaller than the next one's.
            let workers: Vec<usize> = (0..n).filter(|&w| (w + g) % n >= g % 4).collect();
            let with_kept = suspects(&calibration, &code, group, &workers, 2, &mut kept);
            assert_eq!(with_kept, suspects(&calibration, &code, group, &workers, 2, &mut Workspace::default()), "{g}");
            located += with_kept.len();
        }
        // The groups went through the removals, the race and the swaps, not only a first pass.
        assert!(located >= 60, "{located} removals in 60 groups");
    }

    #[test]
    fn ranking_orders_as_a_stable_sort_by_descending_score() {
        let specials = [0.0, -0.0, 1.0, 1.0 + 1e-9, f64::INFINITY, f64::NEG_INFINITY, f64::NAN, -2.5, 1e-300];
        for len in [0, 1, 2, 7, 29, 64, 300] {
            for seed in 0..5 {
                // Ties on purpose: values from a small set, specials among them.
                let scores: Vec<f64> = values(seed, len)
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        if i % 5 == 0 { specials[(i / 5 + seed as usize) % specials.len()] } else { (v * 4.0).round() }
                    })
                    .collect();
                let mut expected: Vec<usize> = (0..len).collect();
                expected.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
                let (mut keys, mut order) = (Vec::new(), vec![99]);
                rank_descending(&scores, &mut keys, &mut order);
                assert_eq!(order, expected, "{scores:?}");
            }
        }
    }

    #[test]
    fn the_sorting_network_sorts_every_length_largest_first() {
        for n in 0..=NETWORK_SORT_MAX + 3 {
            for seed in 0..20 {
                let mut values = values(seed * 100 + n as u64, n);
                // Ties as well.
                if n > 3 {
                    values[n / 2] = values[1];
                }
                let mut expected = values.clone();
                expected.sort_by(|a, b| b.total_cmp(a));
                SortingNetwork::new(n).sort_descending(&mut values);
                assert_eq!(values, expected, "n = {n}, seed {seed}");
            }
        }
    }

    #[test]
    fn a_score_split_into_its_own_row_and_its_residual_is_the_whole_distance_of_both_tests() {
        // Every residual length, so that whitening four coordinates at a time meets every
        // remainder, with correlated features (a full whitening) and long ones (diagonal).
        for row_len in (1..=9).chain([40]) {
            let (f, t) = (feature_len(row_len), typicality_len(row_len));
            let samples: Vec<Vec<f64>> = (0..4 * f as u64 + 8)
                .map(|s| {
                    let base = values(s + 1, f);
                    (0..f).map(|j| base[j] + 0.5 * base[(j + 1) % f] + 3.0 * (j as f64)).collect()
                })
                .collect();
            let rows: Vec<&[f64]> = samples.iter().map(Vec::as_slice).collect();
            let joint = Gaussian::fit(&rows, 0, 0.99).unwrap();
            assert_eq!(joint.whitening.len(), if f > MAX_FULL_COVARIANCE { f } else { f * f });
            let residuals: Vec<&[f64]> = rows.iter().map(|r| &r[t..]).collect();
            let consistency = Gaussian::fit(&residuals, 0, 0.99).unwrap();
            let position = Position { joint: joint.clone(), consistency: consistency.clone(), paired: Memo::default() };
            let (mut centred, mut tail, mut scratch) = (vec![0.0; t], vec![0.0; row_len], vec![0.0; 3 * row_len]);
            for probe in 0..5u64 {
                let feature: Vec<f64> =
                    values(1000 + probe, f).iter().enumerate().map(|(j, v)| 4.0 * v + 3.0 * j as f64).collect();
                let head = joint.prepare(&feature[..t], &mut centred, &mut tail);
                let split = joint.finish(Some((head, &tail)), &feature[t..], &mut scratch);
                let whole = joint.distance(&feature);
                assert!((split - whole).abs() <= 1e-9 * whole, "C = {row_len}: {split} vs {whole}");
                let alone = consistency.finish(None, &feature[t..], &mut scratch);
                let whole_residual = consistency.distance(&feature[t..]);
                assert!(
                    (alone - whole_residual).abs() <= 1e-9 * whole_residual,
                    "C = {row_len}, residual alone: {alone} vs {whole_residual}"
                );
                // Both tests at once, as a position scores a responder, with the residual scaled
                // after whitening.
                let head = position.prepare(&feature[..t], &mut centred, &mut tail);
                let halved: Vec<f64> = feature[t..].iter().map(|v| v * 2.0).collect();
                let residual = Residual { values: &halved, scale: 0.5 };
                let score = position.score((head, &tail), residual, &mut scratch);
                let expected = (whole / joint.threshold).max(whole_residual / consistency.threshold);
                assert!((score - expected).abs() <= 1e-9 * expected, "C = {row_len}, score: {score} vs {expected}");
            }
        }
    }
}
