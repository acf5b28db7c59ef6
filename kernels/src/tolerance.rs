//! Named tolerances for comparing an approximate or lower-precision result with a reference.
//!
//! `|actual - expected| <= absolute + relative * max(|actual|, |expected|)`.
//! One preset per precision the codec computes in, instead of epsilons scattered in tests.

/// A relative plus absolute tolerance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Allowed error relative to the larger magnitude.
    pub relative: f64,
    /// Allowed error near zero.
    pub absolute: f64,
}

/// The first element outside a tolerance.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("element {index}: {actual} vs expected {expected} (|diff| = {diff:e} > {allowed:e})")]
pub struct Mismatch {
    pub index: usize,
    pub actual: f64,
    pub expected: f64,
    pub diff: f64,
    pub allowed: f64,
}

impl Tolerance {
    /// `f64` arithmetic on the same formula, different order of operations.
    pub const STRICT: Tolerance = Tolerance { relative: 1e-12, absolute: 1e-12 };
    /// `f32` data with `f64` weights: a few ulps per term of a short sum.
    pub const BALANCED: Tolerance = Tolerance { relative: 1e-5, absolute: 1e-6 };
    /// `f16` storage with `f32` accumulation: half-precision rounding of inputs and output.
    pub const PERMISSIVE: Tolerance = Tolerance { relative: 4e-3, absolute: 4e-3 };

    /// Whether `actual` is within this tolerance of `expected`. NaN is never close; equal
    /// infinities are.
    pub fn is_close(self, actual: f64, expected: f64) -> bool {
        actual == expected || (actual - expected).abs() <= self.allowed(actual, expected)
    }

    fn allowed(self, actual: f64, expected: f64) -> f64 {
        self.absolute + self.relative * actual.abs().max(expected.abs())
    }

    /// Compares two sequences element by element; the first mismatch, if any. Sequences of
    /// different lengths mismatch at the first missing index.
    pub fn check(
        self,
        actual: impl IntoIterator<Item = f64>,
        expected: impl IntoIterator<Item = f64>,
    ) -> Result<(), Mismatch> {
        let mut actual = actual.into_iter();
        let mut expected = expected.into_iter();
        for index in 0.. {
            match (actual.next(), expected.next()) {
                (None, None) => return Ok(()),
                (a, e) => {
                    let (a, e) = (a.unwrap_or(f64::NAN), e.unwrap_or(f64::NAN));
                    if !self.is_close(a, e) {
                        let allowed = self.allowed(a, e);
                        return Err(Mismatch { index, actual: a, expected: e, diff: (a - e).abs(), allowed });
                    }
                }
            }
        }
        unreachable!("0.. is endless")
    }
}
