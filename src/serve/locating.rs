//! The coordinator's Byzantine locator, kept up to date from its own traffic.
//!
//! A calibrated locator ([`crate::kernels::locate::calibrated`]) learns how honest answers vary
//! at every worker position. A service sees thousands of groups, most answers in them honest:
//! every group is handed to a learner thread less the answers the active locator removed, and
//! the learner keeps each position's most recent features and refits every so often; the new
//! calibration replaces the active locator at the next batch. It starts from a calibration
//! file or, without one, from the robust locator. Learning never blocks serving: when the
//! learner falls behind, groups are not learnt from.
//!
//! A worker that always lies leaves its position without honest answers to learn from: once
//! every other position has enough, the calibration is fitted without it (at most `A` such
//! positions), and its answers are removed first ([`CalibrationBuilder::fit_excluding`]).
//! Those answers are learnt from where the robust locator (which needs nothing learnt) does
//! not name them in their group: a worker that was down or lying for a while and answers
//! honestly again can be learnt back, and is judged like the others once it has enough.

use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Sender, TrySendError};

use crate::kernels::locate::calibrated::DEFAULT_FALSE_ALARM;
use crate::kernels::{Calibration, CalibrationBuilder, Code, Locator};

/// How the coordinator learns its calibrated locator from traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Learning {
    /// The probability that an honest answer is flagged.
    pub false_alarm: f64,
    /// Groups kept to learn from (the most recent).
    pub window: usize,
    /// Refit after this many more groups learnt from.
    pub refit_every: usize,
}

impl Default for Learning {
    fn default() -> Self {
        Learning { false_alarm: DEFAULT_FALSE_ALARM, window: 4096, refit_every: 1000 }
    }
}

/// What `/metrics` reports of the locator.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocatorState {
    /// The active locator's name.
    pub locator: &'static str,
    /// Whether it learns from traffic.
    pub learning: bool,
    /// Groups handed to the learner.
    pub observed_groups: u64,
    /// Calibrations fitted from traffic.
    pub refits: u64,
    /// Honest groups the active calibration was fitted on (0 when it is not calibrated).
    pub calibration_groups: u64,
    /// The active calibration's threshold per worker position.
    pub thresholds: Vec<f64>,
    /// Worker positions without enough honest answers among the groups learnt from (a worker
    /// that always lies never has them).
    pub short_positions: Vec<usize>,
    /// Positions the active calibration was fitted without, whose answers it removes first.
    pub suspected: Vec<usize>,
}

/// Groups of the full code: `[B, N, C]` answers (those located NaN), `[B, N]` responders
/// and the positions whose answers among them are vetted by the robust locator before they
/// are learnt.
type Observation = (Vec<f32>, Vec<bool>, Vec<usize>);

/// Groups in flight to the learner before new ones are dropped.
const QUEUE: usize = 64;

/// The locator in use and what learns it.
pub struct OnlineLocator {
    /// The code the calibration describes; groups coded otherwise (none from the coordinator,
    /// which pads partial groups of codes with liars) are located by the robust locator.
    code: Code,
    output_len: usize,
    shared: Arc<Shared>,
    learner: Option<Sender<Observation>>,
}

struct Shared {
    active: Mutex<Locator>,
    state: Mutex<LocatorState>,
}

impl OnlineLocator {
    /// Starts with `initial` for `code` (whose answers have `output_len` values), learning a
    /// calibrated locator from traffic when `learning` is given. A calibration that does not
    /// describe `code` is an error.
    pub fn start(code: &Code, output_len: usize, initial: Locator, learning: Option<Learning>) -> Result<Self, String> {
        if let Locator::Calibrated(calibration) = &initial {
            calibration.check(code, output_len).map_err(|e| e.to_string())?;
        }
        let state = LocatorState { learning: learning.is_some(), ..describe(&initial) };
        let byzantine = code.params().byzantine();
        let shared = Arc::new(Shared { active: Mutex::new(initial), state: Mutex::new(state) });
        let learner = match learning {
            Some(learning) => {
                let builder = CalibrationBuilder::new(code, output_len, learning.window).map_err(|e| e.to_string())?;
                let (sender, receiver) = crossbeam_channel::bounded::<Observation>(QUEUE);
                let shared = shared.clone();
                let code = code.clone();
                std::thread::Builder::new()
                    .name("approxifer-locator".into())
                    .spawn(move || learn((builder, &code), (learning, byzantine), receiver, &shared))
                    .map_err(|e| format!("cannot start the locator's learner: {e}"))?;
                Some(sender)
            }
            None => None,
        };
        Ok(OnlineLocator { code: code.clone(), output_len, shared, learner })
    }

    /// The locator for groups coded with `code`.
    pub fn for_code(&self, code: &Code) -> Locator {
        let active = self.shared.active.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match active {
            Locator::Calibrated(_) if code.params() != self.code.params() => Locator::Robust,
            locator => locator,
        }
    }

    /// Hands the groups of `outputs` (`[B, N, C]`, `masks` the responders before location) to
    /// the learner, if it learns and `code` is its code, less the answers `located` in them
    /// (those of the positions the active calibration suspects to be vetted).
    pub fn observe(&self, code: &Code, outputs: &[f32], masks: &[bool], located: &[Vec<usize>]) {
        let Some(learner) = &self.learner else { return };
        if code.params() != self.code.params() {
            return;
        }
        let suspected = match &*self.shared.active.lock().unwrap_or_else(PoisonError::into_inner) {
            Locator::Calibrated(calibration) => calibration.suspected.clone(),
            _ => Vec::new(),
        };
        let (n, c) = (code.params().workers(), self.output_len);
        // The answers located are blanked (NaN: the learner skips them), but for the
        // suspected positions', which the learner vets: a worker that lies in every group
        // (it is located in every one) must not keep the others from being learnt.
        let mut answers = outputs.to_vec();
        for (group, found) in answers.chunks_exact_mut(n * c).zip(located) {
            for &w in found.iter().filter(|w| !suspected.contains(w)) {
                group[w * c..(w + 1) * c].fill(f32::NAN);
            }
        }
        let responders = masks.to_vec();
        if located.is_empty() {
            return;
        }
        let groups = located.len() as u64;
        match learner.try_send((answers, responders, suspected)) {
            Ok(()) => self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).observed_groups += groups,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }

    /// The code's `A`.
    pub fn byzantine(&self) -> usize {
        self.code.params().byzantine()
    }

    /// What `/metrics` reports.
    pub fn state(&self) -> LocatorState {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The learner thread: observes groups and refits; ends when the coordinator drops
/// its sender.
fn learn(
    (mut builder, code): (CalibrationBuilder, &Code),
    (learning, byzantine): (Learning, usize),
    observations: crossbeam_channel::Receiver<Observation>,
    shared: &Shared,
) {
    let mut since_fit = 0;
    for (mut answers, masks, vetted) in observations {
        vet(code, (&mut answers, &masks), &vetted);
        let before = builder.groups();
        // The coordinator checked these shapes when it located them.
        if builder.observe(&answers, &masks).is_err() {
            continue;
        }
        since_fit += builder.groups() - before;
        let short = builder.short_positions();
        shared.state.lock().unwrap_or_else(PoisonError::into_inner).short_positions.clone_from(&short);
        // More positions without honest answers than a group can remove: wait for them.
        if since_fit < learning.refit_every || short.len() > byzantine {
            continue;
        }
        since_fit = 0;
        // A fit can fail only on degenerate traffic; the active locator then stays.
        let Ok(calibration) = builder.fit_excluding(learning.false_alarm, &short) else { continue };
        let locator = Locator::Calibrated(Arc::new(calibration));
        let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = LocatorState {
            learning: true,
            observed_groups: state.observed_groups,
            refits: state.refits + 1,
            short_positions: short,
            ..describe(&locator)
        };
        drop(state);
        *shared.active.lock().unwrap_or_else(PoisonError::into_inner) = locator;
    }
}

/// Turns into NaN, which the learner skips, the answers (`[B, N, C]`, responders `masks`) of
/// `vetted` positions that the robust locator names in their group (all of them where it
/// cannot judge the groups). Not their masks: a group must keep the responders its code
/// decodes from to be learnt from at all.
fn vet(code: &Code, (answers, masks): (&mut [f32], &[bool]), vetted: &[usize]) {
    if vetted.is_empty() {
        return;
    }
    let n = code.params().workers();
    let output_len = answers.len() / masks.len().max(1);
    let located = match crate::kernels::locate(code, &Locator::Robust, answers, output_len, masks) {
        Ok(location) => location.located,
        Err(_) => vec![vetted.to_vec(); masks.len() / n],
    };
    for (group, named) in answers.chunks_exact_mut(n * output_len).zip(&located) {
        for &w in vetted.iter().filter(|w| named.contains(w)) {
            group[w * output_len..(w + 1) * output_len].fill(f32::NAN);
        }
    }
}

/// The state fields a locator itself decides.
fn describe(locator: &Locator) -> LocatorState {
    let calibration: Option<&Calibration> = match locator {
        Locator::Calibrated(calibration) => Some(&**calibration),
        _ => None,
    };
    LocatorState {
        locator: locator.name(),
        calibration_groups: calibration.map_or(0, |c| c.groups as u64),
        suspected: calibration.map_or_else(Vec::new, |c| c.suspected.clone()),
        thresholds: calibration.map_or_else(Vec::new, |c| c.summary().iter().map(|p| p.threshold).collect()),
        ..LocatorState::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{CodeParams, cpu};

    #[test]
    fn vetting_keeps_a_suspected_positions_answer_the_robust_locator_accepts_and_blanks_one_it_names() {
        // K = 3, A = 1, N = 8: a smooth model's answers to two groups; worker 2's answer is
        // honest in the first and a hundred times too large in the second.
        let code = Code::new(CodeParams::builder(3, 8).byzantine(1).build().unwrap()).unwrap();
        let (n, dim, c) = (8, 3, 4);
        let queries: Vec<f32> = (0..2 * 3 * dim).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let coded = cpu::encode_to_vec(&code, &queries, dim).unwrap();
        let mut answers: Vec<f32> = coded
            .chunks_exact(dim)
            .flat_map(|x| {
                (0..c).map(move |k| (x.iter().enumerate().map(|(j, v)| v * (j + k) as f32).sum::<f32>()).tanh())
            })
            .collect();
        answers[(n + 2) * c..(n + 3) * c].iter_mut().for_each(|v| *v *= 100.0);
        let masks = vec![true; 2 * n];
        let mut vetted = answers.clone();
        vet(&code, (&mut vetted, &masks), &[2]);
        let row = |v: &[f32], row: usize| v[row * c..(row + 1) * c].to_vec();
        assert_eq!(row(&vetted, 2), row(&answers, 2), "the honest answer is learnt");
        assert!(row(&vetted, n + 2).iter().all(|v| v.is_nan()), "the lie is not");
        let left_out = vetted.chunks_exact(c).filter(|r| r.iter().any(|v| v.is_nan())).count();
        assert_eq!(left_out, 1, "only vetted positions are left out");
        // Nothing to vet: the answers as they were.
        let mut untouched = answers.clone();
        vet(&code, (&mut untouched, &masks), &[]);
        assert_eq!(untouched, answers);
    }
}
