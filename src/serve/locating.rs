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
//! A batch's partial group (`K' < K` queries left when the queue delay fires) is coded for its
//! own `K'`, and a calibration describes one code: each partial code has a locator of its own,
//! from a calibration file that holds one for it (`approxifer calibrate --partial`), else
//! robust until its learner has seen enough of its groups (the same learner thread, one
//! calibration per code).
//!
//! A worker that always lies leaves its position without honest answers to learn from: once
//! every other position has enough, the calibration is fitted without it (at most `A` such
//! positions), and its answers are removed first ([`CalibrationBuilder::fit_excluding`]).
//! Those answers are learnt from where the robust locator (which needs nothing learnt) does
//! not name them in their group: a worker that was down or lying for a while and answers
//! honestly again can be learnt back, and is judged like the others once it has enough.
//!
//! The same thread keeps each worker's [`Reputation`]: a worker whose answers disagree with
//! the others' over many batches, wherever it was placed, is suspected, its answers removed
//! from every group before locating ([`OnlineLocator::suspected_workers`]) and not learnt
//! from. This finds the liars no single group gives away, which the calibration would
//! otherwise learn as honest.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Sender, TrySendError};

use super::reputation::Reputation;
use crate::kernels::locate::calibrated::DEFAULT_FALSE_ALARM;
use crate::kernels::{Calibration, CalibrationBuilder, Code, CodeParams, Locator};

/// How the coordinator learns its calibrated locator from traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct Learning {
    /// The probability that an honest answer is flagged (asked for in proportion by the
    /// calibrations fitted on fewer than 400 groups).
    pub false_alarm: f64,
    /// Groups kept to learn from (the most recent).
    pub window: usize,
    /// Refit after this many more groups learnt from.
    pub refit_every: usize,
    /// Where every calibrated code's calibration is saved after each fit (the configured
    /// code's first), for the next start's calibration file: a restarted service then
    /// starts calibrated, for any model, with no offline calibration.
    pub save: Option<PathBuf>,
}

impl Default for Learning {
    fn default() -> Self {
        Learning { false_alarm: DEFAULT_FALSE_ALARM, window: 4096, refit_every: 1000, save: None }
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
    /// Per partial group size `K'` seen, the calibrations fitted for its code from traffic
    /// (`[K', refits]`, increasing `K'`).
    pub partial_refits: Vec<(usize, u64)>,
    /// The partial group sizes `K'` whose code is located by a calibration, from the file or
    /// fitted from traffic (increasing); the others' groups are located robustly. Read from
    /// the active locators when the state is taken.
    pub partial_calibrated: Vec<usize>,
    /// The workers whose answers disagreed with the others' over many batches
    /// ([`Reputation`]), removed from every group before locating (increasing).
    pub suspected_workers: Vec<usize>,
}

/// Groups of one code as the workers answered them, and what was made of them.
struct Observation {
    code: Code,
    /// `[B, N, C]`.
    answers: Vec<f32>,
    /// `[B, N]`: who answered.
    masks: Vec<bool>,
    /// Per group, the nodes located (learnt from only where vetted).
    located: Vec<Vec<usize>>,
    /// Per node, the worker that answered it.
    placed: Vec<usize>,
    /// The positions whose answers the robust locator vets before they are learnt (those the
    /// code's active calibration suspects).
    vetted: Vec<usize>,
}

/// Groups in flight to the learner before new ones are dropped.
const QUEUE: usize = 64;

/// The locators in use and what learns them.
pub struct OnlineLocator {
    /// The configured code, whose locator `/metrics` describes; its partial groups' codes
    /// have locators of their own.
    code: Code,
    shared: Arc<Shared>,
    learner: Option<Sender<Observation>>,
    /// The learner thread, joined on drop so that its last fit is saved
    /// ([`Learning::save`]) before a stopping service exits.
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// Per code, its locator: the configured code's first, then each partial code's once
    /// it has a calibration of its own.
    active: Mutex<Vec<(CodeParams, Locator)>>,
    state: Mutex<LocatorState>,
    /// [`Reputation::suspected`], as the learner last judged.
    suspected_workers: Mutex<Vec<usize>>,
}

impl Shared {
    /// `code`'s locator, if it has one of its own.
    fn active(&self, code: &CodeParams) -> Option<Locator> {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.iter().find(|(params, _)| params == code).map(|(_, locator)| locator.clone())
    }

    /// Every code's calibration, of those located by one (the configured code's first).
    fn calibrations(&self) -> Vec<Calibration> {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let calibrated = active.iter().filter_map(|(_, locator)| match locator {
            Locator::Calibrated(calibration) => Some((**calibration).clone()),
            _ => None,
        });
        calibrated.collect()
    }

    /// The `K'` of the codes other than `configured` that a calibration locates, increasing.
    fn partial_calibrated(&self, configured: &CodeParams) -> Vec<usize> {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let mut queries: Vec<usize> = active
            .iter()
            .filter(|(params, locator)| params != configured && matches!(locator, Locator::Calibrated(_)))
            .map(|(params, _)| params.queries())
            .collect();
        queries.sort_unstable();
        queries
    }

    /// Makes `locator` `code`'s.
    fn replace(&self, code: &CodeParams, locator: Locator) {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        match active.iter_mut().find(|(params, _)| params == code) {
            Some((_, old)) => *old = locator,
            None => active.push((*code, locator)),
        }
    }
}

impl OnlineLocator {
    /// Starts with `initial` for `code` (whose answers have `output_len` values) and the
    /// `partial` calibrations for its partial groups' codes, learning a calibrated locator
    /// from traffic when `learning` is given. A calibration that does not describe `code`, or
    /// a partial one that describes none of its partial groups' codes, is an error.
    pub fn start(
        code: &Code,
        output_len: usize,
        (initial, partial): (Locator, &[Arc<Calibration>]),
        learning: Option<Learning>,
    ) -> Result<Self, String> {
        if let Locator::Calibrated(calibration) = &initial {
            calibration.check(code, output_len).map_err(|e| e.to_string())?;
        }
        let state = LocatorState { learning: learning.is_some(), ..describe(&initial) };
        let paper = matches!(initial, Locator::Paper);
        let mut active = vec![(*code.params(), initial)];
        let k = code.params().queries();
        for calibration in partial {
            let described = (1..k).filter_map(|k| code.for_queries(k).ok()).find(|c| calibration.describes(c));
            let Some(described) = described else {
                let (queries, workers) = (calibration.queries, calibration.workers);
                if k == 1 {
                    return Err(format!(
                        "a calibration for K = {queries}, N = {workers} is not for this service: with K = 1 it forms \
                         no partial groups"
                    ));
                }
                return Err(format!(
                    "a calibration for K = {queries}, N = {workers} describes none of the codes this service forms for \
                     its partial groups (K' = 1 to {}, from K = {k}, S = {}, A = {})",
                    k - 1,
                    code.params().stragglers(),
                    code.params().byzantine()
                ));
            };
            calibration.check(&described, output_len).map_err(|e| e.to_string())?;
            active.push((*described.params(), Locator::Calibrated(calibration.clone())));
        }
        let shared = Arc::new(Shared {
            active: Mutex::new(active),
            state: Mutex::new(state),
            suspected_workers: Mutex::new(Vec::new()),
        });
        // The learner thread keeps the workers' reputations wherever liars are tolerated (but
        // for the paper's locator, kept as published: a baseline), and learns calibrations
        // when asked to.
        let reputed = code.params().byzantine() > 0 && !paper;
        let (learner, thread) = if learning.is_some() || reputed {
            let main = match learning {
                // Checked here, where a bad setting can be refused: the partial codes'
                // builders, made as their groups come, have the same output length.
                Some(learning) => Some((
                    *code.params(),
                    CalibrationBuilder::new(code, output_len, learning.window).map_err(|e| e.to_string())?,
                    learning,
                )),
                None => None,
            };
            let (sender, receiver) = crossbeam_channel::bounded::<Observation>(QUEUE);
            let shared = shared.clone();
            let reputation = Reputation::new(code.params().workers(), code.params().byzantine());
            let thread = std::thread::Builder::new()
                .name("approxifer-locator".into())
                .spawn(move || learn(main, output_len, (receiver, reputation), &shared))
                .map_err(|e| format!("cannot start the locator's learner: {e}"))?;
            (Some(sender), Some(thread))
        } else {
            (None, None)
        };
        Ok(OnlineLocator { code: code.clone(), shared, learner, thread })
    }

    /// The locator for groups coded with `code`: its own, or until it has one (a partial
    /// code with no calibration from the file, before its first from traffic) the robust
    /// locator where the configured code's is calibrated, the configured one otherwise.
    pub fn for_code(&self, code: &Code) -> Locator {
        if let Some(locator) = self.shared.active(code.params()) {
            return locator;
        }
        match self.shared.active(self.code.params()) {
            Some(Locator::Calibrated(_)) | None => Locator::Robust,
            Some(locator) => locator,
        }
    }

    /// Hands the groups of `outputs` (`[B, N, C]` as the workers answered, `masks` the
    /// responders before location), coded with `code` (the configured one or a partial
    /// group's) and answered by the workers `placed` (per node), to the learner thread, if
    /// there is one: it scores every answer for the workers' reputations and, if it learns,
    /// learns from them less those `located` (those of the positions the code's active
    /// calibration suspects are vetted).
    pub fn observe(&self, code: &Code, outputs: &[f32], masks: &[bool], located: &[Vec<usize>], placed: &[usize]) {
        let Some(learner) = &self.learner else { return };
        if located.is_empty() {
            return;
        }
        let vetted = match self.shared.active(code.params()) {
            Some(Locator::Calibrated(calibration)) => calibration.suspected.clone(),
            _ => Vec::new(),
        };
        let observation = Observation {
            code: code.clone(),
            answers: outputs.to_vec(),
            masks: masks.to_vec(),
            located: located.to_vec(),
            placed: placed.to_vec(),
            vetted,
        };
        let groups = located.len() as u64;
        match learner.try_send(observation) {
            Ok(()) => self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).observed_groups += groups,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {}
        }
    }

    /// The workers suspected of lying over many batches ([`Reputation`]), increasing: their
    /// answers are to be removed from every group before locating. None with the paper's
    /// locator, which is kept as published.
    pub fn suspected_workers(&self) -> Vec<usize> {
        self.shared.suspected_workers.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The code's `A`.
    pub fn byzantine(&self) -> usize {
        self.code.params().byzantine()
    }

    /// What `/metrics` reports.
    pub fn state(&self) -> LocatorState {
        let state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).clone();
        LocatorState {
            partial_calibrated: self.shared.partial_calibrated(self.code.params()),
            suspected_workers: self.suspected_workers(),
            ..state
        }
    }
}

impl Drop for OnlineLocator {
    /// Ends the learner (its queue is closed) and waits for it: the groups already handed to
    /// it are learnt, and a fit they make is saved.
    fn drop(&mut self) {
        self.learner.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One code's learning: what it has seen, how many groups since its last fit, how many that
/// fit was on (`None`: its locator is not calibrated yet), and per position how many answers
/// it saw and how many of them had been located.
struct Learner {
    params: CodeParams,
    builder: CalibrationBuilder,
    since_fit: usize,
    fitted_on: Option<usize>,
    located: Vec<(u64, u64)>,
}

impl Learner {
    fn new(params: CodeParams, builder: CalibrationBuilder, fitted_on: Option<usize>) -> Self {
        let located = vec![(0, 0); params.workers()];
        Learner { params, builder, since_fit: 0, fitted_on, located }
    }

    /// Counts the answers of `answers` (`[B, N, C]`, responders `masks`; those located NaN).
    fn count(&mut self, answers: &[f32], masks: &[bool]) {
        let n = self.located.len();
        let c = answers.len() / masks.len().max(1);
        for (group, mask) in answers.chunks_exact(n * c).zip(masks.chunks_exact(n)) {
            for (w, (seen, located)) in self.located.iter_mut().enumerate().filter(|(w, _)| mask[*w]) {
                *seen += 1;
                *located += u64::from(group[w * c..(w + 1) * c].iter().any(|v| v.is_nan()));
            }
        }
    }

    /// Whether position `w`'s answers were located in most of the groups it answered in (at
    /// least [`LYING_SEEN`] of them): a liar's, not a position that rarely answers.
    fn lying(&self, w: usize) -> bool {
        let (seen, located) = self.located[w];
        seen >= LYING_SEEN && 4 * located >= 3 * seen
    }

    /// Whether it is time to fit, with `short` positions: after a twentieth of `refit_every`
    /// groups for the first calibration (then with every position's answers, or short only of
    /// liars' positions: one merely short of enough would be fitted without, its answers
    /// removed unjudged), then whenever the groups learnt from have doubled, at most every
    /// `refit_every` groups. No more positions without honest answers than a group can remove.
    fn due(&self, refit_every: usize, short: &[usize]) -> bool {
        let first = (refit_every / FIRST_FIT).max(1);
        let after = self.fitted_on.map_or(first, |groups| groups.max(first)).min(refit_every);
        let removable = short.len() <= self.params.byzantine();
        let complete =
            short.is_empty() || (removable && (self.fitted_on.is_some() || short.iter().all(|&w| self.lying(w))));
        match self.since_fit >= refit_every {
            true => removable,
            false => self.since_fit >= after && complete,
        }
    }
}

/// The first calibration comes after `refit_every / FIRST_FIT` groups.
const FIRST_FIT: usize = 20;

/// A calibration fitted on fewer groups than this is fitted for a false-alarm probability in
/// proportion ([`young`]).
const YOUNG: usize = 400;

/// The false-alarm probability a calibration fitted on `groups` groups is fitted for, to
/// remove about `false_alarm` of the honest answers: fitted on few, its thresholds are exceeded
/// by new honest answers more often than asked (1.7 times at 60 groups, README), so the first
/// fits, each replaced as the groups double, ask for less. Measured, serve-bench nobody lying
/// (2000 queries, seeds 7 and 11): honest answers removed at `A = 1` 1.13 / 1.26 % -> 0.67 /
/// 1.09 %, `A = 2` 1.40 / 1.37 % -> 0.89 / 1.09 %, `A = 3` 1.36 / 1.69 % -> 0.85 / 1.26 %,
/// `K = 8` 1.34 / 1.29 % -> 1.06 / 0.90 % (the rest is the robust locator's, before the first
/// fit).
fn young(false_alarm: f64, groups: usize) -> f64 {
    false_alarm * (groups as f64 / YOUNG as f64).min(1.0)
}

/// The answers a position must have given before most of them located make it a liar's
/// ([`Learner::lying`]).
const LYING_SEEN: u64 = 50;

/// The learner thread: observes every code's groups and refits each code's calibration
/// (`main`: the configured code's builder); ends when the coordinator drops its sender.
///
/// A code's first calibration comes after a twentieth of `refit_every` groups
/// ([`Learner::due`]), as soon as every position has enough answers at the default: until
/// then its groups are located robustly, and the robust locator's false alarms at small `N` (3
/// to 6.5 % of honest answers at `K = 2` to `4`, `A = 1`, `S = 1`: `eval --byzantine 1 --k
/// 2,3,4 --stragglers 1 --model lenet5 --dataset fashion-mnist`) cost more than those of a
/// calibration fitted on 60 groups (0.8 to 0.9 %, `--calibration-groups 60 --outputs
/// softmax`; 0.3 to 0.8 % on 100, 0.1 to 0.3 % on 1000).
fn learn(
    main: Option<(CodeParams, CalibrationBuilder, Learning)>,
    output_len: usize,
    (observations, mut reputation): (crossbeam_channel::Receiver<Observation>, Reputation),
    shared: &Shared,
) {
    // A code calibrated from a file is refitted from traffic every `refit_every` groups, as if
    // its calibration had been fitted on as many.
    let fitted_on = |params: &CodeParams, learning: &Learning| {
        matches!(shared.active(params), Some(Locator::Calibrated(_))).then_some(learning.refit_every)
    };
    let (mut learners, learning) = match main {
        Some((params, builder, learning)) => {
            (vec![Learner::new(params, builder, fitted_on(&params, &learning))], Some(learning))
        }
        None => (Vec::new(), None),
    };
    for Observation { code, mut answers, masks, located, placed, vetted } in observations {
        reputation.observe(&code, &answers, &masks, &placed);
        let suspected = reputation.suspected();
        let changed = *shared.suspected_workers.lock().unwrap_or_else(PoisonError::into_inner) != suspected;
        if changed {
            suspected.clone_into(&mut shared.suspected_workers.lock().unwrap_or_else(PoisonError::into_inner));
        }
        let Some(learning) = &learning else { continue };
        // The answers located are blanked (NaN: the builder skips them), but for the
        // vetted positions': a worker that lies in every group (it is located in every one)
        // must not keep the others from being learnt.
        let (n, c) = (code.params().workers(), output_len);
        if answers.len() != masks.len() * c {
            continue;
        }
        for (group, found) in answers.chunks_exact_mut(n * c).zip(&located) {
            for &w in found.iter().filter(|w| !vetted.contains(w)) {
                group[w * c..(w + 1) * c].fill(f32::NAN);
            }
        }
        let params = *code.params();
        let at = match learners.iter().position(|l| l.params == params) {
            Some(at) => at,
            None => match CalibrationBuilder::new(&code, output_len, learning.window) {
                Ok(builder) => {
                    learners.push(Learner::new(params, builder, fitted_on(&params, learning)));
                    learners.len() - 1
                }
                // Only a code no calibration can describe; its groups stay robust.
                Err(_) => continue,
            },
        };
        let learner = &mut learners[at];
        learner.count(&answers, &masks);
        vet(&code, (&mut answers, &masks), &vetted);
        let before = learner.builder.groups();
        // The coordinator checked these shapes when it located them.
        if learner.builder.observe(&answers, &masks).is_err() {
            continue;
        }
        learner.since_fit += learner.builder.groups() - before;
        let short = learner.builder.short_positions();
        let configured = at == 0;
        if configured {
            shared.state.lock().unwrap_or_else(PoisonError::into_inner).short_positions.clone_from(&short);
        }
        if !learner.due(learning.refit_every, &short) {
            continue;
        }
        learner.since_fit = 0;
        // A fit can fail only on degenerate traffic; the active locator then stays.
        let false_alarm = young(learning.false_alarm, learner.builder.groups());
        let Ok(calibration) = learner.builder.fit_excluding(false_alarm, &short) else { continue };
        learner.fitted_on = Some(calibration.groups);
        let locator = Locator::Calibrated(Arc::new(calibration));
        // In use before the state counts it, so that a state showing the refit shows its code
        // calibrated too.
        shared.replace(&params, locator.clone());
        let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if configured {
            *state = LocatorState {
                learning: true,
                observed_groups: state.observed_groups,
                refits: state.refits + 1,
                short_positions: short,
                partial_refits: std::mem::take(&mut state.partial_refits),
                ..describe(&locator)
            };
        } else {
            let queries = params.queries();
            match state.partial_refits.iter_mut().find(|(k, _)| *k == queries) {
                Some((_, refits)) => *refits += 1,
                None => {
                    state.partial_refits.push((queries, 1));
                    state.partial_refits.sort_unstable();
                }
            }
        }
        drop(state);
        if let Some(path) = &learning.save {
            // Off the serving path; a failure (a full disk) is said, and the next fit retries.
            if let Err(e) = crate::calibration_file::save(path, &shared.calibrations()) {
                eprintln!("approxifer: saving the learnt calibrations: {e}");
            }
        }
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
    use super::super::testing::answers;
    use super::*;
    use crate::kernels::{CodeParams, cpu};

    #[test]
    fn a_partial_groups_code_learns_a_calibration_of_its_own_and_the_configured_code_keeps_its_locator() {
        // K = 3, A = 1: the configured code has N = 7; a partial group of K' = 2 is coded
        // with N' = 5. Only partial groups are seen.
        let full = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let partial = Code::new(CodeParams::builder(2, 5).byzantine(1).build().unwrap()).unwrap();
        let learning = Learning { refit_every: 200, ..Learning::default() };
        let online = OnlineLocator::start(&full, 4, (Locator::Robust, &[]), Some(learning)).unwrap();
        assert_eq!(online.for_code(&partial), Locator::Robust, "robust until it has its own");
        // Fewer batches than the learner's queue holds: none is dropped.
        for batch in 0..30 {
            let outputs = answers(&partial, 10, batch * 1000);
            online.observe(&partial, &outputs, &[true; 50], &vec![Vec::new(); 10], &[0, 1, 2, 3, 4]);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while online.state().partial_refits.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let state = online.state();
        assert!(matches!(state.partial_refits[..], [(2, refits)] if refits >= 1), "{state:?}");
        assert_eq!(state.partial_calibrated, [2]);
        assert_eq!((state.locator, state.refits), ("robust", 0), "the configured code saw no group");
        match online.for_code(&partial) {
            Locator::Calibrated(calibration) => calibration.check(&partial, 4).unwrap(),
            other => panic!("the partial code is located by {other}"),
        }
        assert_eq!(online.for_code(&full), Locator::Robust);
    }

    #[test]
    fn the_first_calibrations_fitted_on_few_groups_ask_for_fewer_false_alarms() {
        let full = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let learning = Learning { refit_every: 200, ..Learning::default() };
        let online = OnlineLocator::start(&full, 4, (Locator::Robust, &[]), Some(learning)).unwrap();
        let fitted = |least_groups: usize| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                if let Locator::Calibrated(calibration) = online.for_code(&full)
                    && (calibration.groups >= least_groups || std::time::Instant::now() > deadline)
                {
                    return calibration;
                }
                assert!(std::time::Instant::now() < deadline, "no fit");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let feed = |batches: std::ops::Range<usize>| {
            for batch in batches {
                let outputs = answers(&full, 10, batch * 1000);
                online.observe(&full, &outputs, &[true; 70], &vec![Vec::new(); 10], &[0, 1, 2, 3, 4, 5, 6]);
            }
        };
        // The first fit, after a twentieth of refit_every (10 groups) once every position has
        // enough answers.
        feed(0..6);
        let first = fitted(1);
        assert!(first.groups < YOUNG, "{}", first.groups);
        let asked = DEFAULT_FALSE_ALARM * first.groups as f64 / YOUNG as f64;
        assert!((first.false_alarm - asked).abs() <= 1e-15, "{} for {asked}", first.false_alarm);
        // Refits as the groups double, up to every 200; past 400 groups the false alarm asked.
        for round in 0..6 {
            feed(6 + round * 10..16 + round * 10);
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let grown = fitted(YOUNG);
        assert_eq!(grown.false_alarm, DEFAULT_FALSE_ALARM, "fitted on {} groups", grown.groups);
    }

    #[test]
    fn every_fit_saves_the_calibrated_codes_for_the_next_start_the_configured_one_first() {
        // K = 3, A = 1: the partial code of K' = 2 (N' = 5) is fitted first, then the
        // configured one (N = 7); after each fit the file holds every calibrated code's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("learnt.json");
        let full = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let partial = full.for_queries(2).unwrap();
        let learning = Learning { refit_every: 200, save: Some(path.clone()), ..Learning::default() };
        let online = OnlineLocator::start(&full, 4, (Locator::Robust, &[]), Some(learning)).unwrap();
        let settle = |done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !done() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let feed = |code: &Code, seed: usize| {
            let n = code.params().workers();
            for batch in 0..30 {
                let outputs = answers(code, 10, seed + batch * 1000);
                online.observe(code, &outputs, &vec![true; 10 * n], &vec![Vec::new(); 10], &(0..n).collect::<Vec<_>>());
            }
        };
        assert!(!path.exists(), "nothing learnt, nothing saved");
        feed(&partial, 0);
        settle(&|| crate::calibration_file::read(&path).is_ok());
        assert!(!online.state().partial_refits.is_empty());
        let saved = crate::calibration_file::read(&path).unwrap();
        assert_eq!(saved.queries(), [2]);
        assert!(saved.for_code(&partial).describes(&partial));
        feed(&full, 500_000);
        settle(&|| online.state().refits > 0);
        settle(&|| crate::calibration_file::read(&path).is_ok_and(|saved| saved.queries().len() == 2));
        let saved = crate::calibration_file::read(&path).unwrap();
        assert_eq!(saved.queries(), [3, 2], "the configured code's first, as `calibrate --partial` writes");
        let Locator::Calibrated(active) = online.for_code(&full) else { panic!("the configured code is calibrated") };
        // The same calibration, read back to within a float's last bit (serde_json's reading).
        let (saved, active) = (saved.for_code(&full).summary(), active.summary());
        assert_eq!(
            saved.iter().map(|p| p.samples).collect::<Vec<_>>(),
            active.iter().map(|p| p.samples).collect::<Vec<_>>()
        );
        assert!(saved.iter().zip(&active).all(|(a, b)| (a.threshold - b.threshold).abs() <= 1e-12 * b.threshold));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "written beside and renamed: nothing left over");
    }

    #[test]
    fn a_partial_groups_code_starts_from_the_files_calibration_and_one_for_no_such_code_is_refused() {
        // K = 3, A = 1, N = 7: serve codes a partial group of K' = 2 with N' = 5.
        let full = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let partial = full.for_queries(2).unwrap();
        assert_eq!((partial.params().queries(), partial.params().workers()), (2, 5));
        let calibrated = |code: &Code| {
            let n = code.params().workers();
            let mut builder = CalibrationBuilder::new(code, 4, usize::MAX).unwrap();
            builder.observe(&answers(code, 300, 0), &vec![true; 300 * n]).unwrap();
            Arc::new(builder.fit(DEFAULT_FALSE_ALARM).unwrap())
        };
        let calibration = calibrated(&partial);
        let online =
            OnlineLocator::start(&full, 4, (Locator::Robust, std::slice::from_ref(&calibration)), None).unwrap();
        assert_eq!(online.for_code(&partial), Locator::Calibrated(calibration.clone()));
        assert_eq!(online.for_code(&full.for_queries(1).unwrap()), Locator::Robust, "no calibration for K' = 1");
        assert_eq!(online.for_code(&full), Locator::Robust);
        assert_eq!((online.state().partial_calibrated, online.state().partial_refits), (vec![2], vec![]));
        // A calibration for a code serve never forms here (N' = 6), or for answers of another
        // length: refused at start, saying why.
        let other = calibrated(&Code::new(CodeParams::builder(2, 6).byzantine(1).build().unwrap()).unwrap());
        let refused = OnlineLocator::start(&full, 4, (Locator::Robust, &[other]), None).err().expect("refused");
        assert!(refused.contains("K = 2, N = 6 describes none") && refused.contains("K' = 1 to 2"), "{refused}");
        let refused = OnlineLocator::start(&full, 5, (Locator::Robust, std::slice::from_ref(&calibration)), None);
        let refused = refused.err().expect("refused");
        assert!(refused.contains("4 outputs") && refused.contains("5 outputs"), "{refused}");
        // A code of one query forms no partial groups at all.
        let single = full.for_queries(1).unwrap();
        let refused = OnlineLocator::start(&single, 4, (Locator::Robust, &[calibration]), None).err().expect("refused");
        assert!(refused.contains("with K = 1 it forms no partial groups"), "{refused}");
    }

    #[test]
    fn a_partial_code_started_from_the_file_is_refitted_every_refit_every_groups_not_early() {
        // K = 3, A = 1, N = 7; the partial code of K' = 2 (N' = 5) starts from a calibration
        // of 300 groups. Learning with --refit-every 100: a code learnt from scratch would be
        // fitted after 20 of its groups; one from the file keeps it until 100 have come.
        let full = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let partial = full.for_queries(2).unwrap();
        let mut builder = CalibrationBuilder::new(&partial, 4, usize::MAX).unwrap();
        builder.observe(&answers(&partial, 300, 0), &[true; 300 * 5]).unwrap();
        let file = Arc::new(builder.fit(DEFAULT_FALSE_ALARM).unwrap());
        let learning = Learning { refit_every: 100, ..Learning::default() };
        let online = OnlineLocator::start(&full, 4, (Locator::Robust, std::slice::from_ref(&file)), Some(learning));
        let online = online.unwrap();
        let feed = |batches: std::ops::Range<usize>| {
            for batch in batches {
                let outputs = answers(&partial, 10, 100_000 + batch * 1000);
                online.observe(&partial, &outputs, &[true; 50], &vec![Vec::new(); 10], &[0, 1, 2, 3, 4]);
            }
        };
        let refits = || online.state().partial_refits;
        let settle = |done: &dyn Fn() -> bool| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !done() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        // 90 groups: past a fifth of 100, short of 100.
        feed(0..9);
        settle(&|| online.state().observed_groups >= 90);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(refits(), vec![], "the file's calibration is kept");
        assert_eq!(online.for_code(&partial), Locator::Calibrated(file.clone()));
        feed(9..11);
        settle(&|| !refits().is_empty());
        assert_eq!(refits(), vec![(2, 1)], "refitted once 100 groups came");
        assert!(matches!(online.for_code(&partial), Locator::Calibrated(c) if *c != *file));
    }

    #[test]
    fn a_code_is_fitted_early_then_as_its_sample_doubles_then_every_refit_every_groups() {
        let code = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let builder = CalibrationBuilder::new(&code, 4, 4096).unwrap();
        let mut learner = Learner::new(*code.params(), builder, None);
        let mut due = |fitted_on: Option<usize>, since_fit: usize, short: &[usize]| {
            (learner.fitted_on, learner.since_fit) = (fitted_on, since_fit);
            learner.due(1000, short)
        };
        // The first: after 50 groups, with every position's answers until 1000 (A = 1).
        assert!(!due(None, 49, &[]) && due(None, 50, &[]));
        assert!(!due(None, 999, &[4]) && due(None, 1000, &[4]) && !due(None, 1000, &[4, 5]));
        // Then when the sample has doubled, a position short or not, every 1000 at most.
        assert!(!due(Some(300), 299, &[]) && due(Some(300), 300, &[4]));
        assert!(!due(Some(3000), 999, &[]) && due(Some(3000), 1000, &[]));
    }

    #[test]
    fn a_position_whose_answers_were_mostly_located_does_not_hold_the_first_fit_back() {
        // K = 3, A = 1, N = 7, 60 groups: position 4's answer located in 55 of them (a liar's),
        // position 5's in 10 and missing from 20 more (a slow worker's, sometimes wrong).
        let code = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let builder = CalibrationBuilder::new(&code, 4, 4096).unwrap();
        let mut learner = Learner::new(*code.params(), builder, None);
        let (n, c) = (7, 4);
        let mut answers = answers(&code, 60, 0);
        let mut masks = vec![true; 60 * n];
        for g in 0..60 {
            let mut blank = |w: usize| answers[(g * n + w) * c..(g * n + w + 1) * c].fill(f32::NAN);
            if g < 55 {
                blank(4);
            }
            if g < 10 {
                blank(5);
            }
            masks[g * n + 5] &= g < 40;
        }
        learner.count(&answers, &masks);
        assert_eq!((learner.located[4], learner.located[5], learner.located[0]), ((60, 55), (40, 10), (60, 0)));
        learner.since_fit = 50;
        assert!(learner.due(1000, &[4]), "a liar's position is fitted without from the first fit");
        assert!(!learner.due(1000, &[5]) && !learner.due(1000, &[4, 5]), "not a position merely short");
        learner.since_fit = 49;
        assert!(!learner.due(1000, &[4]), "the first fit waits for its groups all the same");
    }

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
