//! Byzantine location: which responders of a group returned wrong answers.
//!
//! A code built with `A > 0` (and `N >= 2K + 2A + S - 1`) can lose `S` workers *and* have `A`
//! of the rest lie. Decoding such a group takes two steps:
//!
//! 1. [`locate`] finds, per group, the workers to drop: every responder whose row holds a NaN
//!    or an infinity (those are faulty without any statistics), then up to `A` minus that many
//!    suspects chosen by a [`Locator`];
//! 2. the group is decoded from the rest with the *erasure code* of the same nodes
//!    ([`Code::erasure_code`]), on the CPU ([`cpu::decode_robust`](crate::cpu::decode_robust)
//!    does both steps) or on the GPU with the returned masks; or, with a calibrated locator,
//!    the missing rows are first filled with what the learnt predictor expects of them
//!    ([`Locator::imputed`]) and the group decodes from all `N` nodes with the code itself.
//!
//! Three locators are offered. [`Locator::Paper`] is the authors' rational Berlekamp–Welch
//! fit ([`rational`]). [`Locator::Robust`] is ours with nothing learnt ([`robust`]): on a real
//! model's logits it finds 1.5 to 8 times more of the sign-flipping, targeted and colluding
//! liars, and removes about 1% of the honest workers when nobody lies where the paper's always
//! removes `A`. [`Locator::Calibrated`] is ours learnt from honest traffic ([`calibrated`]):
//! at `A = 1` on the same logits it finds 0.96 to 1.00 of most attacks' liars (README,
//! "Byzantine workers").

pub mod calibrated;
mod composition;
mod conditional;
mod loo;
pub mod rational;
pub mod robust;

use std::sync::Arc;

use rayon::prelude::*;

pub use calibrated::{Calibration, CalibrationBuilder};

use crate::code::Code;
use crate::cpu::{Accumulator, Element};
use crate::error::{Error, Result};
use crate::shape::{expect_len, whole_groups};

/// How suspects are chosen among a group's (finite) answers. None looks at how the answers
/// were corrupted: all ask which answers the others, or honest traffic, fail to explain.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Locator {
    /// The paper's: per output coordinate, a least-squares rational fit `P(beta) = y Q(beta)`
    /// of degrees `K + A - 1`; each coordinate votes for its `A` smallest `|Q(beta_i)|`; the
    /// `A` most voted are removed. Always removes `A` workers.
    Paper,
    /// Ours, with nothing learnt: robust z-scores of each whole row's consistency with the
    /// others (leave-one-out Berrut residual) and of its typicality (its sorted values against
    /// the group's); workers are removed one at a time while their score stands out. May
    /// remove fewer than `A`, none when nobody lies.
    #[default]
    Robust,
    /// Ours, calibrated on honest traffic of this model and code ([`calibrated`]): each
    /// responder's consistency and typicality features against what honest answers at its
    /// position look like.
    Calibrated(Arc<Calibration>),
}

impl Locator {
    /// The locators that need nothing learnt, for comparisons.
    pub const UNCALIBRATED: [Locator; 2] = [Locator::Robust, Locator::Paper];

    /// The groups of `outputs` with every row `masks` leaves out filled with its prediction
    /// ([`Calibration::impute`]), to decode from all `N` nodes with the code itself; `None`
    /// for a code without liars (`A = 0`) and where nothing was learnt to predict them (the
    /// uncalibrated locators, a calibration file written before the predictor): decode the
    /// responders with the erasure code.
    pub fn imputed<T: Element>(
        &self,
        code: &Code,
        outputs: &[T],
        row_len: usize,
        masks: &[bool],
    ) -> Result<Option<Vec<T>>> {
        let Locator::Calibrated(calibration) = self else { return Ok(None) };
        // A code without liars decodes its stragglers as it always has.
        if code.params().byzantine() == 0 {
            return Ok(None);
        }
        let mut filled = outputs.to_vec();
        Ok(calibration.impute(code, &mut filled, row_len, masks)?.then_some(filled))
    }

    /// The name used on the command line and in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Locator::Paper => "paper",
            Locator::Robust => "robust",
            Locator::Calibrated(_) => "calibrated",
        }
    }

    /// Up to `budget` suspects among `group`'s rows (`[N, row_len]`, all finite on the
    /// responders `workers`, which are sorted), as worker indices; `workspace` is scratch kept
    /// between groups.
    fn suspects(
        &self,
        code: &Code,
        (group, row_len): (&[f64], usize),
        workers: &[usize],
        budget: usize,
        workspace: &mut calibrated::Workspace,
    ) -> Vec<usize> {
        if budget == 0 {
            return Vec::new();
        }
        match self {
            Locator::Paper => rational::suspects(code, group, row_len, workers, budget),
            Locator::Robust => robust::suspects(code, group, row_len, workers, budget),
            Locator::Calibrated(calibration) => {
                calibrated::suspects(calibration, code, group, workers, budget, workspace)
            }
        }
    }
}

impl std::str::FromStr for Locator {
    type Err = String;

    /// `paper` or `robust`; the calibrated locator is built from a [`Calibration`].
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "paper" => Ok(Locator::Paper),
            "robust" => Ok(Locator::Robust),
            "calibrated" => Err("the calibrated locator is made from a calibration, not a name".into()),
            _ => Err(format!("unknown locator '{s}'; expected robust or paper")),
        }
    }
}

impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`locate`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// `[B, N]`: the responders to decode from (the input masks less the located workers).
    pub masks: Vec<bool>,
    /// Per group, the workers removed, increasing: non-finite answers and suspects.
    pub located: Vec<Vec<usize>>,
}

/// Finds the faulty workers of every group of `outputs` (`[B, N, row_len]`), where
/// `masks[b, n]` says whether worker `n` answered group `b`.
///
/// A responder whose row holds a NaN or an infinity is always removed and counts against the
/// code's `A`; the `locator` then looks for the remaining budget among the finite answers.
/// More non-finite answers than `A` in a group is an error ([`Error::TooManyFaulty`]), as are
/// bad shapes and too few responders; nothing is returned for any group then.
pub fn locate<T: Element>(
    code: &Code,
    locator: &Locator,
    outputs: &[T],
    row_len: usize,
    masks: &[bool],
) -> Result<Location> {
    let n = code.params().workers();
    let groups = whole_groups("worker outputs", outputs.len(), n, row_len)?;
    expect_len("responder masks", masks.len(), groups * n)?;
    code.check_masks(masks)?;
    let byzantine = code.params().byzantine();
    if let Locator::Calibrated(calibration) = locator {
        calibration.check(code, row_len)?;
    }
    let located = outputs
        .par_chunks_exact(n * row_len)
        .zip(masks.par_chunks_exact(n))
        .enumerate()
        // Scratch per rayon job, not per group (a group's buffers are a few kilobytes:
        // [`loo::Pool`]).
        .map_init(Scratch::<T>::default, |scratch, (index, (group, mask))| {
            let Scratch { wide, values, workspace } = scratch;
            widen_into(group, wide, values);
            let values = &values[..];
            let responders = (0..n).filter(|&w| mask[w]);
            let (non_finite, finite): (Vec<usize>, Vec<usize>) =
                responders.partition(|&w| values[w * row_len..(w + 1) * row_len].iter().any(|v| !v.is_finite()));
            if non_finite.len() > byzantine {
                return Err(Error::TooManyFaulty { group: index, non_finite: non_finite.len(), byzantine });
            }
            let budget = byzantine - non_finite.len();
            let mut removed = non_finite;
            removed.extend(locator.suspects(code, (values, row_len), &finite, budget, workspace));
            removed.sort_unstable();
            Ok(removed)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut kept = masks.to_vec();
    for (group, removed) in kept.chunks_exact_mut(n).zip(&located) {
        for &w in removed {
            group[w] = false;
        }
    }
    Ok(Location { masks: kept, located })
}

/// `values` in `f64`, as both the locators and calibration read them.
fn widen<T: Element>(values: &[T]) -> Vec<f64> {
    let mut out = Vec::new();
    widen_into(values, &mut Vec::new(), &mut out);
    out
}

/// [`widen`] into `out`, through `wide` (both overwritten).
fn widen_into<T: Element>(values: &[T], wide: &mut Vec<T::Acc>, out: &mut Vec<f64>) {
    wide.clear();
    wide.resize(values.len(), T::Acc::default());
    T::widen(values, wide);
    out.clear();
    out.extend(wide.iter().map(|v| v.to_f64()));
}

/// What [`locate`] keeps from one group to the next.
struct Scratch<T: Element> {
    wide: Vec<T::Acc>,
    values: Vec<f64>,
    workspace: calibrated::Workspace,
}

impl<T: Element> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { wide: Vec::new(), values: Vec::new(), workspace: calibrated::Workspace::default() }
    }
}
