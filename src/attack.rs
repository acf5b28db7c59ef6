//! Attack models: how Byzantine workers corrupt their answers, for evaluation
//! (`approxifer eval --byzantine`) and for fault injection in serving ([`Attack::tamper`]).
//!
//! Every attack acts on the rows the liars of one group would have returned honestly. The
//! scales are those of the answers themselves (a random answer stays in the honest row's
//! range, a targeted one overshoots it by one spread) except Gaussian noise, whose `sigma` is
//! absolute, as in the paper. Two attacks only move an honest row's values between its
//! coordinates (`rotate`, `swap-top`): the lie keeps the row's sorted profile, its spread and,
//! for class probabilities, its being a probability vector, so nothing in the row alone gives
//! it away; only its disagreement with the other workers' answers does.

use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::serve::Tamper;

/// How a Byzantine worker lies.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(into = "String")]
pub enum Attack {
    /// Nobody lies: the baseline every false-positive rate is measured on.
    None,
    /// Adds `N(0, sigma^2)` noise to every value.
    Gaussian { sigma: f32 },
    /// Negates every value (the paper's other attack).
    SignFlip,
    /// Replaces every value with one drawn uniformly from the honest row's range.
    Random,
    /// Replaces every value with the honest row's mean: an answer with no information.
    Constant,
    /// Raises class `class` one spread (max - min) above the row's largest value, so the
    /// liar votes for that class.
    Targeted { class: usize },
    /// All liars of a group return the same vector: the first liar's targeted answer.
    Colluding { class: usize },
    /// Every value moves to the next coordinate (the last to the first): a classifier's
    /// answer names another class with the same confidence.
    Rotate,
    /// The largest value and the second largest trade places: the answer names the
    /// runner-up class with the winner's confidence, the most plausible wrong answer.
    SwapTop,
}

/// The class targeted and colluding liars push.
pub const TARGET_CLASS: usize = 0;

impl Attack {
    /// Every attack the issue names, the paper's three noise levels included.
    pub const ALL: [Attack; 10] = [
        Attack::Gaussian { sigma: 1.0 },
        Attack::Gaussian { sigma: 10.0 },
        Attack::Gaussian { sigma: 100.0 },
        Attack::SignFlip,
        Attack::Random,
        Attack::Constant,
        Attack::Targeted { class: TARGET_CLASS },
        Attack::Colluding { class: TARGET_CLASS },
        Attack::Rotate,
        Attack::SwapTop,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> String {
        match self {
            Attack::None => "none".into(),
            Attack::Gaussian { sigma } => format!("gaussian-{sigma}"),
            Attack::SignFlip => "sign-flip".into(),
            Attack::Random => "random".into(),
            Attack::Constant => "constant".into(),
            Attack::Targeted { .. } => "targeted".into(),
            Attack::Colluding { .. } => "colluding".into(),
            Attack::Rotate => "rotate".into(),
            Attack::SwapTop => "swap-top".into(),
        }
    }

    /// Corrupts the rows the liars of one group computed honestly.
    pub fn corrupt(self, liars: &mut [&mut [f32]], rng: &mut impl Rng) {
        match self {
            Attack::Colluding { class } => {
                let Some((first, rest)) = liars.split_first_mut() else { return };
                target(first, class);
                for row in rest {
                    row.copy_from_slice(first);
                }
            }
            _ => liars.iter_mut().for_each(|row| self.corrupt_one(row, rng)),
        }
    }

    fn corrupt_one(self, row: &mut [f32], rng: &mut impl Rng) {
        let (low, high) = range(row);
        match self {
            Attack::None => {}
            Attack::Gaussian { sigma } => {
                // sigma is validated positive and finite when parsed; 1.0 if not.
                let noise = Normal::new(0.0, f64::from(sigma)).unwrap_or(Normal::new(0.0, 1.0).expect("unit normal"));
                row.iter_mut().for_each(|v| *v += noise.sample(rng) as f32);
            }
            Attack::SignFlip => row.iter_mut().for_each(|v| *v = -*v),
            Attack::Random => row.iter_mut().for_each(|v| *v = low + (high - low) * rng.random::<f32>()),
            Attack::Constant => {
                let mean = row.iter().sum::<f32>() / row.len().max(1) as f32;
                row.fill(mean);
            }
            Attack::Targeted { class } | Attack::Colluding { class } => target(row, class),
            Attack::Rotate => row.rotate_right(1),
            Attack::SwapTop => {
                if let Some((first, second)) = top_two(row) {
                    row.swap(first, second);
                }
            }
        }
    }

    /// This attack as a worker's tamper hook, for fault injection in serving. A hook sees one
    /// answer at a time, so colluders there agree on the class rather than on a whole vector.
    pub fn tamper(self, seed: u64) -> Tamper {
        let rng = Mutex::new(rand::rngs::StdRng::seed_from_u64(seed));
        Arc::new(move |row: &mut Vec<f32>| {
            let mut rng = rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            self.corrupt_one(row, &mut *rng);
        })
    }
}

/// Raises `class` (clamped to the row) one spread above the row's largest value.
fn target(row: &mut [f32], class: usize) {
    let (low, high) = range(row);
    if let Some(v) = row.get_mut(class.min(row.len().saturating_sub(1))) {
        *v = high + (high - low).max(1.0);
    }
}

/// The indices of a row's largest and second largest values (`None` for fewer than two
/// values); NaN sorts below everything.
fn top_two(row: &[f32]) -> Option<(usize, usize)> {
    let key = |i: usize| if row[i].is_nan() { f32::NEG_INFINITY } else { row[i] };
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    (row.len() >= 2).then(|| (order[0], order[1]))
}

/// The smallest and largest finite values of a row (0, 0 when it has none).
fn range(row: &[f32]) -> (f32, f32) {
    let finite = row.iter().copied().filter(|v| v.is_finite());
    let (low, high) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    if low <= high { (low, high) } else { (0.0, 0.0) }
}

impl From<Attack> for String {
    fn from(attack: Attack) -> String {
        attack.name()
    }
}

impl std::fmt::Display for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for Attack {
    type Err = String;

    /// `none`, `gaussian-SIGMA`, `sign-flip`, `random`, `constant`, `targeted`, `colluding`,
    /// `rotate`, `swap-top`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(sigma) = s.strip_prefix("gaussian-") {
            return match sigma.parse::<f32>() {
                Ok(sigma) if sigma > 0.0 && sigma.is_finite() => Ok(Attack::Gaussian { sigma }),
                _ => Err(format!("attack '{s}': the noise level after gaussian- must be a positive number")),
            };
        }
        match s {
            "none" => Ok(Attack::None),
            "sign-flip" => Ok(Attack::SignFlip),
            "random" => Ok(Attack::Random),
            "constant" => Ok(Attack::Constant),
            "targeted" => Ok(Attack::Targeted { class: TARGET_CLASS }),
            "colluding" => Ok(Attack::Colluding { class: TARGET_CLASS }),
            "rotate" => Ok(Attack::Rotate),
            "swap-top" => Ok(Attack::SwapTop),
            _ => Err(format!(
                "unknown attack '{s}'; expected none, gaussian-SIGMA (e.g. gaussian-10), sign-flip, random, constant, \
                 targeted, colluding, rotate or swap-top"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(3)
    }

    #[test]
    fn names_parse_back_to_the_same_attack() {
        for attack in Attack::ALL.into_iter().chain([Attack::None]) {
            assert_eq!(attack.name().parse::<Attack>(), Ok(attack));
        }
        assert!("gaussian-0".parse::<Attack>().is_err());
        assert!("gaussian-x".parse::<Attack>().unwrap_err().contains("positive number"));
        assert!("flip".parse::<Attack>().unwrap_err().contains("sign-flip"));
    }

    #[test]
    fn every_attack_but_none_changes_an_honest_row() {
        let honest = [3.0f32, -1.0, 7.5, 0.25];
        for attack in Attack::ALL {
            let mut row = honest;
            attack.corrupt(&mut [&mut row[..]], &mut rng());
            assert_ne!(row, honest, "{attack}");
        }
        let mut row = honest;
        Attack::None.corrupt(&mut [&mut row[..]], &mut rng());
        assert_eq!(row, honest);
    }

    #[test]
    fn attacks_do_what_their_names_say() {
        let honest = [3.0f32, -1.0, 7.5, 0.25];
        let corrupt = |attack: Attack| {
            let mut row = honest;
            attack.corrupt(&mut [&mut row[..]], &mut rng());
            row
        };
        assert_eq!(corrupt(Attack::SignFlip), [-3.0, 1.0, -7.5, -0.25]);
        assert_eq!(corrupt(Attack::Constant), [2.4375; 4]);
        assert!(corrupt(Attack::Random).iter().all(|v| (-1.0..=7.5).contains(v)));
        let targeted = corrupt(Attack::Targeted { class: 1 });
        assert_eq!(targeted[1], 7.5 + 8.5);
        assert_eq!(crate::demo::argmax(&targeted), 1);
        assert_eq!(corrupt(Attack::Rotate), [0.25, 3.0, -1.0, 7.5]);
        assert_eq!(corrupt(Attack::SwapTop), [7.5, -1.0, 3.0, 0.25]);
    }

    #[test]
    fn permuting_attacks_keep_a_probability_vector_one() {
        let honest = [0.05f32, 0.7, 0.2, 0.05];
        for attack in [Attack::Rotate, Attack::SwapTop] {
            let mut row = honest;
            attack.corrupt(&mut [&mut row[..]], &mut rng());
            let (mut sorted, mut before) = (row, honest);
            sorted.sort_by(f32::total_cmp);
            before.sort_by(f32::total_cmp);
            assert_eq!(sorted, before, "{attack}");
            assert_ne!(crate::demo::argmax(&row), 1, "{attack}");
        }
        // A row too short to permute is left as it is, not indexed out of range.
        let mut one = [4.0f32];
        Attack::SwapTop.corrupt(&mut [&mut one[..]], &mut rng());
        assert_eq!(one, [4.0]);
    }

    #[test]
    fn colluders_return_one_and_the_same_wrong_answer() {
        let (mut a, mut b) = ([1.0f32, 5.0, 2.0], [4.0f32, 0.0, 9.0]);
        Attack::Colluding { class: 0 }.corrupt(&mut [&mut a[..], &mut b[..]], &mut rng());
        assert_eq!(a, b);
        assert_eq!(a, [9.0, 5.0, 2.0]);
    }

    #[test]
    fn the_tamper_hook_applies_the_attack() {
        let hook = Attack::SignFlip.tamper(1);
        let mut row = vec![1.0, -2.0];
        hook(&mut row);
        assert_eq!(row, [-1.0, 2.0]);
    }
}
