//! Which workers lie, judged over many groups rather than one.
//!
//! One group's answers barely tell an honest blend from a liar whose answer keeps the profile
//! of an honest one (its values moved between classes, `rotate` and `swap-top` in
//! [`crate::attack`]): with the embedded LeNet-5 (`K = 4`, `A = 1`) the robust locator's median
//! score of a `rotate` liar stood 1.6 above an honest worker's at the same node, a `swap-top`
//! liar's 0.4, inside the spread of honest scores. And a calibration learnt from
//! traffic cannot learn what a position's honest answers look like when one worker has
//! answered at that position in every group, lying.
//!
//! So with liars tolerated (`A > 0`) the coordinator places the workers on the code's nodes
//! afresh for every batch ([`super::coordinator`]), and this keeps, per worker, the robust
//! locator's score of its answers ([`robust::scores`]) less the usual score at the node it
//! served (the median of every worker's recent scores there: nodes differ, at the ends of
//! the interval most). An honest worker's excess averages out to about what every honest
//! worker's does; a liar's does not. Each worker's evidence is one sample per batch segment
//! it served (the groups of one batch share their placement, so they are not independent
//! samples), and a worker is suspected when its mean sample stands [`SUSPECT_Z`] standard
//! errors above the workers' median mean; up to `A` of them, the most suspect first. It
//! stays suspected while it stands [`CLEAR_Z`] above, so that it does not come and go.
//!
//! A suspected worker's answers are removed from every group before the locator looks for
//! the rest of the code's `A` liars, and are not learnt from; they are still scored, so a
//! worker that answers honestly again is cleared within a window of batches.

use std::collections::{HashMap, VecDeque};

use crate::kernels::Code;
use crate::kernels::locate::robust;

/// Samples (batch segments) kept per worker: the most recent.
pub const WINDOW: usize = 256;

/// A worker is judged once it has this many samples.
pub const MIN_SAMPLES: usize = 32;

/// Standard errors above the workers' median at which a worker is suspected.
pub const SUSPECT_Z: f64 = 6.0;

/// Standard errors above the median below which a suspected worker is cleared.
pub const CLEAR_Z: f64 = 3.0;

/// Scores are clipped to this (the robust locator removes a worker above 6): one group's
/// clear outlier, an honest worker's rare false alarm included, weighs no more than a few
/// ordinary scores.
const CLIP: f64 = 8.0;

/// Scores kept per node of each code, of every worker that served it.
const NODE_HISTORY: usize = 512;

/// Per-worker evidence of lying.
#[derive(Clone, Debug)]
pub struct Reputation {
    byzantine: usize,
    /// Per code (its `K'`) and node, recent scores there.
    nodes: HashMap<(usize, usize), NodeScores>,
    /// Per worker, its recent samples: mean excess over its node's usual score in a segment.
    samples: Vec<VecDeque<f64>>,
    suspected: Vec<usize>,
}

impl Reputation {
    /// For `workers` workers of a code tolerating `byzantine` liars per group.
    pub fn new(workers: usize, byzantine: usize) -> Self {
        Reputation { byzantine, nodes: HashMap::new(), samples: vec![VecDeque::new(); workers], suspected: Vec::new() }
    }

    /// Scores one batch segment's groups: `answers` `[B, N, C]` as the workers returned them,
    /// `masks` `[B, N]` who answered, `placed[node]` the worker that answered that node.
    pub fn observe(&mut self, code: &Code, answers: &[f32], masks: &[bool], placed: &[usize]) {
        let n = code.params().workers();
        if n == 0 || masks.len() % n != 0 || placed.len() != n {
            return;
        }
        let c = answers.len() / masks.len().max(1);
        if c == 0 || answers.len() != masks.len() * c {
            return;
        }
        let k = code.params().queries();
        let usual: Vec<Option<f64>> =
            (0..n).map(|node| self.nodes.get_mut(&(k, node)).and_then(NodeScores::usual)).collect();
        let mut excess = vec![(0.0, 0usize); n];
        for (group, mask) in answers.chunks_exact(n * c).zip(masks.chunks_exact(n)) {
            let values: Vec<f64> = group.iter().map(|&v| f64::from(v)).collect();
            let row = |w: usize| &values[w * c..(w + 1) * c];
            let responders: Vec<usize> = (0..n).filter(|&w| mask[w] && row(w).iter().all(|v| v.is_finite())).collect();
            if responders.len() < 3 {
                continue;
            }
            let scores = robust::scores(code, &values, c, &responders);
            for (&node, score) in responders.iter().zip(scores) {
                // NaN: an overflow, far out.
                let score = if score.is_nan() { CLIP } else { score.clamp(-CLIP, CLIP) };
                self.nodes.entry((k, node)).or_default().push(score);
                if let Some(usual) = usual[node] {
                    excess[node].0 += score - usual;
                    excess[node].1 += 1;
                }
            }
        }
        for (node, &(sum, count)) in excess.iter().enumerate() {
            let Some(samples) = self.samples.get_mut(placed[node]) else { continue };
            if count > 0 {
                if samples.len() == WINDOW {
                    samples.pop_front();
                }
                samples.push_back(sum / count as f64);
            }
        }
        self.judge();
    }

    /// The workers suspected of lying, at most `A`, increasing.
    pub fn suspected(&self) -> &[usize] {
        &self.suspected
    }

    /// Each judged worker's standing: standard errors of its mean sample above the median
    /// worker's (`None`: fewer than [`MIN_SAMPLES`] samples, or too few workers judged).
    pub fn standings(&self) -> Vec<Option<f64>> {
        let means: Vec<Option<f64>> = self
            .samples
            .iter()
            .map(|s| (s.len() >= MIN_SAMPLES).then(|| s.iter().sum::<f64>() / s.len() as f64))
            .collect();
        let judged: Vec<f64> = means.iter().flatten().copied().collect();
        if judged.len() < 3 {
            return vec![None; self.samples.len()];
        }
        let centre = median(&judged);
        // The standard deviation of one sample about its worker's mean, pooled over the
        // workers: a mean's standard error is that of the samples as they are, heavy tails
        // and all (a MAD leaves the tails out, and a worker's mean then stood out by chance).
        let (sum, count) = self
            .samples
            .iter()
            .zip(&means)
            .filter_map(|(s, mean)| mean.map(|m| s.iter().map(move |v| (v - m) * (v - m))))
            .flatten()
            .fold((0.0, 0usize), |(sum, count), d| (sum + d, count + 1));
        let spread = (sum / count.saturating_sub(1).max(1) as f64).sqrt().max(1e-9);
        means
            .iter()
            .zip(&self.samples)
            .map(|(mean, s)| mean.map(|m| (m - centre) / (spread / (s.len() as f64).sqrt())))
            .collect()
    }

    fn judge(&mut self) {
        let standings = self.standings();
        let mut candidates: Vec<(usize, f64)> = standings
            .iter()
            .enumerate()
            .filter_map(|(w, z)| {
                let bar = if self.suspected.contains(&w) { CLEAR_Z } else { SUSPECT_Z };
                z.filter(|&z| z > bar).map(|z| (w, z))
            })
            .collect();
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        candidates.truncate(self.byzantine);
        let mut suspected: Vec<usize> = candidates.into_iter().map(|(w, _)| w).collect();
        suspected.sort_unstable();
        self.suspected = suspected;
    }
}

/// One node's recent scores, and their median as last taken.
#[derive(Clone, Debug, Default)]
struct NodeScores {
    scores: VecDeque<f64>,
    median: Option<f64>,
    /// Scores added since the median was taken.
    since: usize,
}

impl NodeScores {
    fn push(&mut self, score: f64) {
        if self.scores.len() == NODE_HISTORY {
            self.scores.pop_front();
        }
        self.scores.push_back(score);
        self.since += 1;
    }

    /// The node's usual score: the median of its recent ones (at least [`MIN_SAMPLES`]), taken
    /// again once a sixteenth of the history is new, not every batch (the learner shares the
    /// coordinator's cores: at 1500 q/s the coordinator's decoding per batch took 149-151 us
    /// with a sort of 512 scores per node per batch, 126-138 us without; README).
    fn usual(&mut self) -> Option<f64> {
        if self.scores.len() >= MIN_SAMPLES && (self.median.is_none() || self.since >= NODE_HISTORY / 16) {
            self.median = Some(median(&self.scores.iter().copied().collect::<Vec<_>>()));
            self.since = 0;
        }
        self.median
    }
}

/// The median (upper) of `values`, not empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::super::testing::answers;
    use super::*;
    use crate::kernels::CodeParams;

    /// Feeds `segments` segments of 4 groups, every one with the workers placed at random and
    /// worker `liar`'s rows shifted by `lie`; returns in how many groups the robust locator
    /// alone names worker `liar`.
    fn feed(reputation: &mut Reputation, code: &Code, segments: usize, liar: usize, lie: f32) -> usize {
        let (n, c, groups) = (code.params().workers(), 4, 4);
        let mut rng = StdRng::seed_from_u64(5);
        let mut named = 0;
        for segment in 0..segments {
            let mut placed: Vec<usize> = (0..n).collect();
            placed.shuffle(&mut rng);
            let mut outputs = answers(code, groups, segment * 977);
            let node = placed.iter().position(|&w| w == liar).expect("every worker is placed");
            for group in outputs.chunks_exact_mut(n * c) {
                group[node * c..(node + 1) * c].iter_mut().for_each(|v| *v += lie);
                let values: Vec<f64> = group.iter().map(|&v| f64::from(v)).collect();
                let all: Vec<usize> = (0..n).collect();
                named += usize::from(robust::scores(code, &values, c, &all)[node] > robust::THRESHOLD);
            }
            reputation.observe(code, &outputs, &vec![true; groups * n], &placed);
        }
        named
    }

    fn code() -> Code {
        Code::new(CodeParams::builder(3, 8).stragglers(1).byzantine(1).build().unwrap()).unwrap()
    }

    #[test]
    fn a_worker_whose_answers_the_others_rarely_explain_is_suspected_though_no_group_names_it() {
        let code = code();
        let mut honest = Reputation::new(8, 1);
        let named_honest = feed(&mut honest, &code, 150, 5, 0.0);
        let mut reputation = Reputation::new(8, 1);
        let named = feed(&mut reputation, &code, 150, 5, 0.2);
        // One group at a time the robust locator names the liar hardly more often than it
        // names the same worker honest (a node's rare false alarms) ...
        assert!(named <= named_honest + named_honest / 2, "named in {named} groups, honest in {named_honest}");
        // ... over many it stands out.
        assert_eq!(reputation.suspected(), [5]);
        let standings = reputation.standings();
        assert!(standings[5].unwrap() > SUSPECT_Z, "{standings:?}");
    }

    #[test]
    fn honest_workers_are_not_suspected_and_a_liar_that_turns_honest_is_cleared() {
        let code = code();
        let mut reputation = Reputation::new(8, 1);
        feed(&mut reputation, &code, 150, 2, 0.0);
        assert!(reputation.suspected().is_empty());
        let standings = reputation.standings();
        assert!(standings.iter().all(|z| z.unwrap().abs() < CLEAR_Z), "{standings:?}");
        feed(&mut reputation, &code, 100, 2, 1.0);
        assert_eq!(reputation.suspected(), [2]);
        feed(&mut reputation, &code, WINDOW, 2, 0.0);
        assert!(reputation.suspected().is_empty(), "{:?}", reputation.standings());
    }

    #[test]
    fn honest_workers_with_rare_far_out_answers_are_not_suspected() {
        // Every worker alike. Most segments are groups whose answers are all one row (a code
        // for one query), where every score is the usual one; in the others one worker,
        // drawn at random, answers far out now and then (as an honest answer at the end of
        // the interval sometimes scores). Most samples then sit exactly at the usual score: a
        // spread read off them alone (a MAD) is about nothing, and a worker that drew one
        // more outlier than the others stood out.
        let code = code();
        let (n, c) = (8, 4);
        let mut reputation = Reputation::new(n, 1);
        let mut rng = StdRng::seed_from_u64(11);
        for segment in 0..600 {
            let mut placed: Vec<usize> = (0..n).collect();
            placed.shuffle(&mut rng);
            let mut outputs = answers(&code, 1, segment * 17);
            for group in outputs.chunks_exact_mut(n * c) {
                if rng.random::<f64>() < 0.8 {
                    let first = group[..c].to_vec();
                    group.chunks_exact_mut(c).for_each(|row| row.copy_from_slice(&first));
                } else if rng.random::<f64>() < 0.3 {
                    let node = rng.random_range(0..n);
                    group[node * c..(node + 1) * c].iter_mut().for_each(|v| *v += 1.0);
                }
            }
            reputation.observe(&code, &outputs, &[true; 8], &placed);
            assert!(reputation.suspected().is_empty(), "segment {segment}: {:?}", reputation.standings());
        }
    }

    #[test]
    fn no_more_workers_are_suspected_than_a_group_can_lose() {
        let code = code();
        let mut reputation = Reputation::new(8, 1);
        // Two liars, A = 1: only the one that stands out more.
        let (n, c) = (8, 4);
        let mut rng = StdRng::seed_from_u64(9);
        for segment in 0..150 {
            let mut placed: Vec<usize> = (0..n).collect();
            placed.shuffle(&mut rng);
            let mut outputs = answers(&code, 4, segment * 31);
            for (liar, lie) in [(1, 0.5f32), (6, 2.0)] {
                let node = placed.iter().position(|&w| w == liar).unwrap();
                for group in outputs.chunks_exact_mut(n * c) {
                    group[node * c..(node + 1) * c].iter_mut().for_each(|v| *v += lie);
                }
            }
            reputation.observe(&code, &outputs, &[true; 32], &placed);
        }
        assert_eq!(reputation.suspected(), [6]);
    }
}
