//! The calibrated locator on two models of different kinds (a nonlinear regression and a
//! classifier's logits, the latter also as probabilities), under attacks none of the locators
//! was tuned on: no false alarms (also next to stragglers), never behind the paper's locator
//! (also with three liars per group), robust to liars in the calibration traffic; and its
//! files: round trip, mismatch and damage as typed errors.

use std::sync::Arc;

use approxifer_kernels::locate::calibrated::DEFAULT_FALSE_ALARM;
use approxifer_kernels::{Calibration, CalibrationBuilder, Code, CodeParams, Error, Locator, NodeFamily, cpu, locate};
use rand::{Rng, SeedableRng};

const K: usize = 6;
const DIM: usize = 8;

fn code(a: usize) -> Code {
    let n = CodeParams::workers_needed(K, 0, a);
    Code::new(CodeParams::builder(K, n).byzantine(a).nodes(NodeFamily::Authors).build().unwrap()).unwrap()
}

/// A hosted model: one coded query (`DIM` values) in, one answer row out.
#[derive(Clone, Copy, Debug)]
enum Model {
    /// Four smooth nonlinear outputs of unrelated scales (not a classifier).
    Regression,
    /// Ten logits, `6 tanh(W x) + 2 (w . x)^2`-like.
    Logits,
    /// The same followed by softmax.
    Probabilities,
}

impl Model {
    fn outputs(self) -> usize {
        match self {
            Model::Regression => 4,
            Model::Logits | Model::Probabilities => 10,
        }
    }

    fn answer(self, x: &[f64], weights: &[f64]) -> Vec<f64> {
        let dot = |r: usize| weights[r * DIM..(r + 1) * DIM].iter().zip(x).map(|(w, v)| w * v).sum::<f64>();
        match self {
            Model::Regression => vec![
                (2.0 * dot(0)).sin() * 3.0,
                dot(1).powi(2) - dot(2),
                100.0 * (0.5 * dot(3)).tanh(),
                (dot(4) * dot(5)).abs().sqrt(),
            ],
            Model::Logits | Model::Probabilities => {
                let logits: Vec<f64> = (0..10).map(|r| 6.0 * (2.0 * dot(r)).tanh() + dot(r + 1).powi(2)).collect();
                if let Model::Logits = self {
                    return logits;
                }
                let max = logits.iter().copied().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|v| (v - max).exp()).collect();
                let total: f64 = e.iter().sum();
                e.iter().map(|v| v / total).collect()
            }
        }
    }
}

/// Honest answers to the coded queries of `groups` random groups, `[groups, N, C]`.
fn honest(model: Model, code: &Code, groups: usize, rng: &mut impl Rng) -> Vec<f64> {
    let mut fixed = rand::rngs::StdRng::seed_from_u64(99);
    let weights: Vec<f64> = (0..11 * DIM).map(|_| fixed.random_range(-1.0..1.0)).collect();
    let queries: Vec<f64> = (0..groups * code.params().queries() * DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    let coded = cpu::encode_to_vec(code, &queries, DIM).unwrap();
    coded.chunks_exact(DIM).flat_map(|x| model.answer(x, &weights)).collect()
}

/// Attacks written for this test, unlike `approxifer::attack`'s.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Every value times 3.
    Scale,
    /// Every value shifted by two of the row's spreads.
    Offset,
    /// The row reversed.
    Reverse,
    /// Another group's honest answer at the same position (a stale reply).
    Replay,
}

const ATTACKS: [Attack; 4] = [Attack::Scale, Attack::Offset, Attack::Reverse, Attack::Replay];

/// One liar per group: its index, after corrupting `answers`.
fn corrupt(answers: &mut [f64], n: usize, c: usize, attack: Attack, rng: &mut impl Rng) -> Vec<usize> {
    let groups = answers.len() / (n * c);
    let source = answers.to_vec();
    (0..groups)
        .map(|g| {
            let liar = rng.random_range(0..n);
            let row = &mut answers[(g * n + liar) * c..(g * n + liar + 1) * c];
            let spread = row.iter().copied().fold(f64::MIN, f64::max) - row.iter().copied().fold(f64::MAX, f64::min);
            match attack {
                Attack::Scale => row.iter_mut().for_each(|v| *v *= 3.0),
                Attack::Offset => row.iter_mut().for_each(|v| *v += 2.0 * spread.max(1e-3)),
                Attack::Reverse => row.reverse(),
                Attack::Replay => {
                    let other = (g + 1 + rng.random_range(0..groups - 1)) % groups;
                    row.copy_from_slice(&source[(other * n + liar) * c..(other * n + liar + 1) * c]);
                }
            }
            liar
        })
        .collect()
}

/// Detection (liars found / liars) and false positives (honest removed / honest).
fn rates(found: &[Vec<usize>], liars: &[usize], n: usize) -> (f64, f64) {
    let detected = found.iter().zip(liars).filter(|(f, l)| f.contains(l)).count();
    let wrong: usize = found.iter().zip(liars).map(|(f, l)| f.iter().filter(|w| *w != l).count()).sum();
    (detected as f64 / liars.len() as f64, wrong as f64 / (liars.len() * (n - 1)) as f64)
}

fn calibrated(model: Model, code: &Code, groups: usize, seed: u64) -> Arc<Calibration> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = code.params().workers();
    let mut builder = CalibrationBuilder::new(code, model.outputs(), usize::MAX).unwrap();
    builder.observe(&honest(model, code, groups, &mut rng), &vec![true; groups * n]).unwrap();
    Arc::new(builder.fit(DEFAULT_FALSE_ALARM).unwrap())
}

#[test]
fn no_false_alarms_and_never_behind_the_papers_locator() {
    let code = code(1);
    let n = code.params().workers();
    for model in [Model::Regression, Model::Logits, Model::Probabilities] {
        let c = model.outputs();
        let locator = Locator::Calibrated(calibrated(model, &code, 3000, 1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let groups = 1000;
        let clean = honest(model, &code, groups, &mut rng);
        let masks = vec![true; groups * n];
        let found = locate(&code, &locator, &clean, c, &masks).unwrap();
        let false_alarms: usize = found.located.iter().map(Vec::len).sum();
        let rate = false_alarms as f64 / (groups * n) as f64;
        assert!(rate <= 0.01, "{model:?}: {rate} of honest workers removed with nobody lying");
        for attack in ATTACKS {
            let mut answers = clean.clone();
            let liars = corrupt(&mut answers, n, c, attack, &mut rng);
            let ours = rates(&locate(&code, &locator, &answers, c, &masks).unwrap().located, &liars, n);
            let paper = rates(&locate(&code, &Locator::Paper, &answers, c, &masks).unwrap().located, &liars, n);
            assert!(ours.0 >= paper.0, "{model:?} {attack:?}: detection {} < the paper's {}", ours.0, paper.0);
            assert!(ours.1 <= 0.01, "{model:?} {attack:?}: false positives {}", ours.1);
        }
    }
}

#[test]
fn a_calibration_fitted_on_few_groups_raises_few_false_alarms_on_new_traffic() {
    // A service's first calibration is fitted on about 60 groups. Read off the distances of
    // the answers they were fitted on, its thresholds sat below those of new answers: 3.9, 7.3
    // and 7.2 % of these were removed (0.8, 1.3 and 1.5 % now; the rate asked for, 0.5 %, is
    // what 1000 groups reach).
    let code = code(1);
    let n = code.params().workers();
    for model in [Model::Regression, Model::Logits, Model::Probabilities] {
        let locator = Locator::Calibrated(calibrated(model, &code, 60, 1));
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let groups = 2000;
        let clean = honest(model, &code, groups, &mut rng);
        let found = locate(&code, &locator, &clean, model.outputs(), &vec![true; groups * n]).unwrap();
        let rate = found.located.iter().map(Vec::len).sum::<usize>() as f64 / (groups * n) as f64;
        assert!(rate <= 0.02, "{model:?}: {rate} of new honest answers removed");
    }
}

/// `A` liars per group at random positions, each answering `attack`'s corruption.
fn corrupt_several(
    answers: &mut [f64],
    n: usize,
    c: usize,
    a: usize,
    attack: Attack,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    let groups = answers.len() / (n * c);
    (0..groups)
        .map(|g| {
            let mut liars: Vec<usize> = rand::seq::index::sample(rng, n, a).into_vec();
            liars.sort_unstable();
            for &liar in &liars {
                let row = &mut answers[(g * n + liar) * c..(g * n + liar + 1) * c];
                match attack {
                    Attack::Scale => row.iter_mut().for_each(|v| *v *= 3.0),
                    Attack::Reverse => row.reverse(),
                    Attack::Offset | Attack::Replay => unreachable!("not used with several liars"),
                }
            }
            liars
        })
        .collect()
}

/// Detection (liars found / liars) and false positives (honest removed / honest) with several
/// liars per group, of `n` workers each.
fn rates_of_several(found: &[Vec<usize>], liars: &[Vec<usize>], n: usize) -> (f64, f64) {
    let hits: usize = found.iter().zip(liars).map(|(f, l)| f.iter().filter(|w| l.contains(w)).count()).sum();
    let wrong: usize = found.iter().zip(liars).map(|(f, l)| f.iter().filter(|w| !l.contains(w)).count()).sum();
    let (liars, workers) = (liars.iter().map(Vec::len).sum::<usize>(), n * found.len());
    (hits as f64 / liars as f64, wrong as f64 / (workers - liars) as f64)
}

#[test]
fn several_liars_are_found_without_removing_their_honest_neighbours() {
    // With A = 3 an honest worker between two liars is predicted from both and can score above
    // either: removing one worker at a time spends the budget on it and leaves a liar. The
    // locator swaps such removals back, and judges a residual next to a removal on the scale
    // honest residuals have there.
    let code = code(3);
    let (n, model) = (code.params().workers(), Model::Logits);
    let c = model.outputs();
    let locator = Locator::Calibrated(calibrated(model, &code, 3000, 8));
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let groups = 500;
    let masks = vec![true; groups * n];
    for attack in [Attack::Scale, Attack::Reverse] {
        let mut answers = honest(model, &code, groups, &mut rng);
        let liars = corrupt_several(&mut answers, n, c, 3, attack, &mut rng);
        let ours = rates_of_several(&locate(&code, &locator, &answers, c, &masks).unwrap().located, &liars, n);
        let paper = rates_of_several(&locate(&code, &Locator::Paper, &answers, c, &masks).unwrap().located, &liars, n);
        eprintln!("{attack:?}: ours {ours:?}, the paper's {paper:?}");
        assert!(ours.0 >= paper.0 && ours.1 <= paper.1, "{attack:?}: ours {ours:?}, the paper's {paper:?}");
        // A reversed row has an honest row's profile: only its consistency gives it away, and
        // an honest neighbour predicted from it can look the worse. Judging the removals
        // together finds it (without: 0.79 of them found, 0.030 of the honest removed).
        let (detection, false_positives) = match attack {
            Attack::Scale => (0.99, 0.01),
            _ => (0.87, 0.015),
        };
        assert!(ours.0 >= detection && ours.1 <= false_positives, "{attack:?}: {ours:?}");
    }
}

#[test]
fn two_neighbouring_liars_do_not_leave_two_honest_answers_removed() {
    // A = 3: two liars side by side and a third apart, each raising its first output by two
    // of its row's spreads. The honest answers on either side of the pair are predicted from
    // both liars and can be removed first; swapping either back alone returns it next to a
    // liar still kept, so the locator also tries pairs of swaps (without them: 0.85 of the
    // liars found, 0.018 of the honest answers removed, a flank of the pair in 131 groups of
    // 600) and then judges the removals together (without that: 0.966, 0.0045 and 34 groups).
    // With N = 4K workers: at the least N the answers are too far apart to tell.
    let params = CodeParams::builder(K, 4 * K).byzantine(3).nodes(NodeFamily::Authors).build().unwrap();
    let code = Code::new(params).unwrap();
    let (n, model) = (code.params().workers(), Model::Logits);
    let c = model.outputs();
    let locator = Locator::Calibrated(calibrated(model, &code, 3000, 8));
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let groups = 600;
    let mut answers = honest(model, &code, groups, &mut rng);
    let liars: Vec<Vec<usize>> = (0..groups)
        .map(|g| {
            let first = rng.random_range(0..n - 1);
            let apart: Vec<usize> = (0..n).filter(|w| w + 2 < first || *w > first + 3).collect();
            let mut liars = vec![first, first + 1, apart[rng.random_range(0..apart.len())]];
            liars.sort_unstable();
            for &liar in &liars {
                let row = &mut answers[(g * n + liar) * c..(g * n + liar + 1) * c];
                let spread =
                    row.iter().copied().fold(f64::MIN, f64::max) - row.iter().copied().fold(f64::MAX, f64::min);
                row[0] += 2.0 * spread;
            }
            liars
        })
        .collect();
    let found = locate(&code, &locator, &answers, c, &vec![true; groups * n]).unwrap().located;
    let (detection, false_positives) = rates_of_several(&found, &liars, n);
    let flanked = found
        .iter()
        .zip(&liars)
        .filter(|(f, l)| {
            let pair = l.windows(2).find(|w| w[1] == w[0] + 1).map_or(0, |w| w[0]);
            (pair > 0 && f.contains(&(pair - 1))) || f.contains(&(pair + 2))
        })
        .count();
    eprintln!("detection {detection}, false positives {false_positives}, a flank removed in {flanked} groups");
    assert!(detection >= 0.98 && false_positives <= 0.003, "detection {detection}, false positives {false_positives}");
    assert!(flanked * 40 <= groups, "a flank of the pair removed in {flanked} groups of {groups}");
}

#[test]
fn an_answer_far_out_on_its_own_is_removed_whatever_the_others_answer() {
    // A = 3, and one liar more than the code tolerates: in every group one scales its row
    // tenfold (far beyond any honest row's profile) and three reverse theirs (an honest
    // profile: only their neighbours give them away), at random positions. However the budget
    // goes among the three, the first is removed in every group.
    let code = code(3);
    let (n, model) = (code.params().workers(), Model::Logits);
    let c = model.outputs();
    let locator = Locator::Calibrated(calibrated(model, &code, 3000, 8));
    let mut rng = rand::rngs::StdRng::seed_from_u64(10);
    let groups = 300;
    let mut answers = honest(model, &code, groups, &mut rng);
    let reversed = corrupt_several(&mut answers, n, c, 3, Attack::Reverse, &mut rng);
    let scaled: Vec<usize> = reversed
        .iter()
        .enumerate()
        .map(|(g, liars)| {
            let free: Vec<usize> = (0..n).filter(|w| !liars.contains(w)).collect();
            let liar = free[rng.random_range(0..free.len())];
            answers[(g * n + liar) * c..(g * n + liar + 1) * c].iter_mut().for_each(|v| *v *= 10.0);
            liar
        })
        .collect();
    let found = locate(&code, &locator, &answers, c, &vec![true; groups * n]).unwrap().located;
    for (g, (found, liar)) in found.iter().zip(&scaled).enumerate() {
        assert!(
            found.contains(liar),
            "group {g}: the scaled row {liar} kept, {found:?} removed (reversed: {:?})",
            reversed[g]
        );
    }
}

#[test]
fn honest_answers_next_to_missing_workers_raise_no_alarm() {
    // Calibrated on groups where everyone answered; located on groups where two neighbouring
    // workers straggled. The responders next to the gap are predicted across it, so their
    // honest residuals are larger: judged on the full set's scale they looked like liars.
    let n = CodeParams::workers_needed(K, 2, 1);
    let params = CodeParams::builder(K, n).stragglers(2).byzantine(1).nodes(NodeFamily::Authors).build().unwrap();
    let code = Code::new(params).unwrap();
    for model in [Model::Regression, Model::Logits] {
        let c = model.outputs();
        let locator = Locator::Calibrated(calibrated(model, &code, 3000, 10));
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let groups = 1000;
        let answers = honest(model, &code, groups, &mut rng);
        let mut masks = vec![true; groups * n];
        for mask in masks.chunks_exact_mut(n) {
            let first = rng.random_range(0..n - 1);
            mask[first] = false;
            mask[first + 1] = false;
        }
        let alarms: usize = locate(&code, &locator, &answers, c, &masks).unwrap().located.iter().map(Vec::len).sum();
        let rate = alarms as f64 / ((n - 2) * groups) as f64;
        eprintln!("{model:?}: {rate:.4}");
        assert!(rate <= 0.01, "{model:?}: {rate} of honest responders removed next to two stragglers");
    }
}

#[test]
fn liars_in_the_calibration_traffic_do_not_spoil_it() {
    let (code, model) = (code(1), Model::Logits);
    let (n, c) = (code.params().workers(), model.outputs());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let groups = 3000;
    let mut traffic = honest(model, &code, groups, &mut rng);
    // One group in 30 carries a liar adding noise ten times the row's scale.
    for g in (0..groups).step_by(30) {
        let liar = rng.random_range(0..n);
        traffic[(g * n + liar) * c..(g * n + liar + 1) * c]
            .iter_mut()
            .for_each(|v| *v += rng.random_range(-60.0..60.0));
    }
    let mut builder = CalibrationBuilder::new(&code, c, usize::MAX).unwrap();
    builder.observe(&traffic, &vec![true; groups * n]).unwrap();
    let spoiled = Locator::Calibrated(Arc::new(builder.fit(DEFAULT_FALSE_ALARM).unwrap()));
    let clean = Locator::Calibrated(calibrated(model, &code, groups, 3));

    let mut answers = honest(model, &code, 1000, &mut rng);
    let masks = vec![true; 1000 * n];
    let alarms: usize = locate(&code, &spoiled, &answers, c, &masks).unwrap().located.iter().map(Vec::len).sum();
    assert!(alarms as f64 <= 0.01 * (1000 * n) as f64, "{alarms} honest workers removed with nobody lying");
    let liars = corrupt(&mut answers, n, c, Attack::Scale, &mut rng);
    let with = rates(&locate(&code, &spoiled, &answers, c, &masks).unwrap().located, &liars, n);
    let without = rates(&locate(&code, &clean, &answers, c, &masks).unwrap().located, &liars, n);
    assert!(with.0 >= without.0 - 0.05, "detection {} with liars in the calibration, {} without", with.0, without.0);
    assert!(with.1 <= 0.01, "false positives {}", with.1);
}

#[test]
fn a_calibration_survives_a_round_trip_and_refuses_another_code() {
    let code = code(1);
    let calibration = calibrated(Model::Regression, &code, 400, 4);
    let untouched = (*calibration).clone();
    let text = serde_json::to_string(&*calibration).unwrap();
    let back: Calibration = serde_json::from_str(&text).unwrap();
    back.check(&code, 4).unwrap();
    // Decimal JSON may move the last bit of a float, never a decision.
    let n = code.params().workers();
    let mut rng = rand::rngs::StdRng::seed_from_u64(40);
    let mut answers = honest(Model::Regression, &code, 300, &mut rng);
    corrupt(&mut answers, n, 4, Attack::Offset, &mut rng);
    let masks = vec![true; 300 * n];
    let before = locate(&code, &Locator::Calibrated(calibration.clone()), &answers, 4, &masks).unwrap();
    let after = locate(&code, &Locator::Calibrated(Arc::new(back.clone())), &answers, 4, &masks).unwrap();
    assert_eq!(before, after);
    // What locating made and kept (the code's leave-one-out terms) is no part of equality.
    assert_eq!(*calibration, untouched, "a used calibration equals its copy from before use");
    let other = Code::new(CodeParams::builder(K, 14).byzantine(1).nodes(NodeFamily::Authors).build().unwrap()).unwrap();
    assert!(matches!(back.check(&other, 4), Err(Error::CalibrationMismatch { .. })));
    assert!(matches!(back.check(&code, 5), Err(Error::CalibrationMismatch { .. })));
    // Through locate too, before any group is looked at.
    let locator = Locator::Calibrated(Arc::new(back));
    let answers = vec![0.0f64; 14 * 4];
    let err = locate(&other, &locator, &answers, 4, &[true; 14]).unwrap_err();
    assert!(err.to_string().contains("N = 13"), "{err}");
}

#[test]
fn a_damaged_calibration_is_an_error_not_a_panic() {
    let code = code(1);
    let calibration = calibrated(Model::Regression, &code, 400, 5);
    let mut value: serde_json::Value = serde_json::to_value(&*calibration).unwrap();
    value["positions"][3]["joint"]["mean"].as_array_mut().unwrap().pop();
    let damaged: Calibration = serde_json::from_value(value.clone()).unwrap();
    assert!(matches!(damaged.check(&code, 4), Err(Error::InvalidCalibration { position: Some(3), .. })));
    // The gap scales: absent (a file from before them) is fine; a non-positive one is not.
    let mut without_gaps: serde_json::Value = serde_json::to_value(&*calibration).unwrap();
    without_gaps.as_object_mut().unwrap().remove("gap_scales").expect("saved with its gap scales");
    serde_json::from_value::<Calibration>(without_gaps).unwrap().check(&code, 4).unwrap();
    let mut bad_gap: serde_json::Value = serde_json::to_value(&*calibration).unwrap();
    bad_gap["gap_scales"][5] = serde_json::json!(-1.0);
    let bad_gap: Calibration = serde_json::from_value(bad_gap).unwrap();
    assert!(matches!(bad_gap.check(&code, 4), Err(Error::InvalidCalibration { position: None, .. })));
    // A predictor whose precision is not symmetric is damaged too.
    let mut asymmetric: serde_json::Value = serde_json::to_value(&*calibration).unwrap();
    asymmetric["predictor"]["precision"][1] = serde_json::json!(1e3);
    let asymmetric: Calibration = serde_json::from_value(asymmetric).unwrap();
    assert!(matches!(asymmetric.check(&code, 4), Err(Error::InvalidCalibration { position: None, .. })));
    // A full whitening is lower triangular (scoring relies on the zeros past the diagonal).
    let mut upper: serde_json::Value = serde_json::to_value(&*calibration).unwrap();
    let whitening = upper["positions"][2]["consistency"]["whitening"].as_array_mut().unwrap();
    assert_eq!(whitening.len(), 16, "rows of 4 have a full 4 x 4 whitening");
    assert_eq!(whitening[1], serde_json::json!(0.0), "saved with zeros above the diagonal");
    whitening[1] = serde_json::json!(0.5);
    let upper: Calibration = serde_json::from_value(upper).unwrap();
    assert!(matches!(upper.check(&code, 4), Err(Error::InvalidCalibration { position: Some(2), .. })));
    value["positions"].as_array_mut().unwrap().pop();
    let short: Calibration = serde_json::from_value(value).unwrap();
    let n = code.params().workers();
    let err = locate(&code, &Locator::Calibrated(Arc::new(short)), &vec![0.0f32; n * 4], 4, &vec![true; n]);
    assert!(matches!(err, Err(Error::InvalidCalibration { position: None, .. })));
}

#[test]
fn a_calibration_file_from_before_the_predictor_still_locates() {
    // Written by the version before the learnt predictor (the regression model, `A = 1`, 400
    // groups): its statistics are of residuals against Berrut's interpolant, so it locates
    // with that interpolant, as it did.
    let text = include_str!("fixtures/calibration-before-predictor.json");
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    assert!(value.get("predictor").is_none(), "a file from before the predictor");
    let calibration: Calibration = serde_json::from_value(value).unwrap();
    let code = code(1);
    calibration.check(&code, 4).unwrap();
    let locator = Locator::Calibrated(Arc::new(calibration));
    let n = code.params().workers();
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    for attack in [Attack::Offset, Attack::Reverse] {
        let mut answers = honest(Model::Regression, &code, 300, &mut rng);
        let liars = corrupt(&mut answers, n, 4, attack, &mut rng);
        let found = locate(&code, &locator, &answers, 4, &vec![true; 300 * n]).unwrap().located;
        let (detection, false_positives) = rates(&found, &liars, n);
        eprintln!("{attack:?}: {detection}, {false_positives}");
        assert!(detection >= 0.9 && false_positives <= 0.01, "{attack:?}: {detection}, {false_positives}");
    }
}

#[test]
fn calibration_needs_enough_honest_answers_and_a_sane_false_alarm_rate() {
    let code = code(1);
    let n = code.params().workers();
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut builder = CalibrationBuilder::new(&code, 4, usize::MAX).unwrap();
    builder.observe(&honest(Model::Regression, &code, 5, &mut rng), &vec![true; 5 * n]).unwrap();
    assert!(!builder.ready());
    assert!(matches!(builder.fit(0.005), Err(Error::TooFewCalibrationSamples { .. })));
    let mut answers = honest(Model::Regression, &code, 400, &mut rng);
    // Non-finite rows are never learnt from; a bad shape is refused whole.
    answers[7] = f64::NAN;
    builder.observe(&answers, &vec![true; 400 * n]).unwrap();
    assert!(builder.ready());
    assert_eq!(builder.groups(), 405);
    assert!(matches!(builder.fit(0.0), Err(Error::InvalidFalseAlarm { .. })));
    assert!(matches!(builder.fit(f64::NAN), Err(Error::InvalidFalseAlarm { .. })));
    assert!(builder.observe(&answers[1..], &vec![true; 400 * n]).is_err());
    assert!(matches!(CalibrationBuilder::new(&code, 0, 10), Err(Error::EmptyRows { .. })));
    builder.fit(0.005).unwrap().check(&code, 4).unwrap();
}

#[test]
fn an_online_builder_keeps_only_the_most_recent_answers() {
    let code = code(1);
    let n = code.params().workers();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut builder = CalibrationBuilder::new(&code, 4, 100).unwrap();
    builder.observe(&honest(Model::Regression, &code, 300, &mut rng), &vec![true; 300 * n]).unwrap();
    let summary = builder.fit(0.01).unwrap().summary();
    assert!(summary.iter().all(|p| p.samples <= 100 && p.threshold.is_finite()), "{summary:?}");
}

#[test]
fn the_robust_locator_raises_no_false_alarms_on_probabilities() {
    // Judged on raw probabilities, blends of near one-hot answers looked atypical and A honest
    // workers per group were removed; on their log-ratios they do not.
    let code = code(2);
    let n = code.params().workers();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let groups = 1000;
    let answers = honest(Model::Probabilities, &code, groups, &mut rng);
    let found = locate(&code, &Locator::Robust, &answers, 10, &vec![true; groups * n]).unwrap();
    let removed: usize = found.located.iter().map(Vec::len).sum();
    assert!(removed as f64 <= 0.02 * (groups * n) as f64, "{removed} of {} honest workers removed", groups * n);
    // A row that is not a probability vector among probability vectors cannot be honest.
    let mut answers = answers;
    answers[3 * 10..4 * 10].iter_mut().for_each(|v| *v = -*v);
    let found = locate(&code, &Locator::Robust, &answers, 10, &vec![true; groups * n]).unwrap();
    assert!(found.located[0].contains(&3));
}

/// Honest answers as [`honest`] makes them, and the model's answers to the raw queries
/// (`[groups, K, C]`: what decoding estimates).
fn honest_with_truth(model: Model, code: &Code, groups: usize, rng: &mut impl Rng) -> (Vec<f64>, Vec<f64>) {
    let mut fixed = rand::rngs::StdRng::seed_from_u64(99);
    let weights: Vec<f64> = (0..11 * DIM).map(|_| fixed.random_range(-1.0..1.0)).collect();
    let queries: Vec<f64> = (0..groups * K * DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
    let coded = cpu::encode_to_vec(code, &queries, DIM).unwrap();
    let answers = coded.chunks_exact(DIM).flat_map(|x| model.answer(x, &weights)).collect();
    let truth = queries.chunks_exact(DIM).flat_map(|x| model.answer(x, &weights)).collect();
    (answers, truth)
}

#[test]
fn filled_in_rows_decode_closer_to_the_model_than_the_erasure_code() {
    // Removed answers (here: `A` random workers per group, their rows NaN, as a liar's may
    // be) are filled with what the learnt predictor expects, and the group decodes from every
    // node: nearer the model's answers to the raw queries than the responders alone give.
    for model in [Model::Regression, Model::Logits, Model::Probabilities] {
        let (a, c, groups) = (2, model.outputs(), 400);
        let code = code(a);
        let n = code.params().workers();
        let locator = Locator::Calibrated(calibrated(model, &code, 1000, 51));
        let mut rng = rand::rngs::StdRng::seed_from_u64(52);
        let (mut answers, truth) = honest_with_truth(model, &code, groups, &mut rng);
        let mut masks = vec![true; groups * n];
        for (mask, group) in masks.chunks_exact_mut(n).zip(answers.chunks_exact_mut(n * c)) {
            while mask.iter().filter(|m| !**m).count() < a {
                let w = rng.random_range(0..n);
                mask[w] = false;
                group[w * c..(w + 1) * c].fill(f64::NAN);
            }
        }
        let filled = locator.imputed(&code, &answers, c, &masks).unwrap().expect("a calibration with a predictor");
        assert!(filled.iter().all(|v| v.is_finite()), "{model:?}: every removed row filled");
        if let Model::Probabilities = model {
            for row in filled.chunks_exact(c) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-9 && row.iter().all(|&p| p > 0.0), "{row:?}");
            }
        }
        let error = |decoded: &[f64]| -> f64 {
            decoded.iter().zip(&truth).map(|(d, t)| (d - t).powi(2)).sum::<f64>() / truth.len() as f64
        };
        let mut decoded = vec![0.0; truth.len()];
        cpu::decode_located(&code, &locator, &answers, c, &masks, &mut decoded).unwrap();
        let with_predictor = error(&decoded);
        cpu::decode_located(&code, &Locator::Robust, &answers, c, &masks, &mut decoded).unwrap();
        let erasure = error(&decoded);
        eprintln!("{model:?}: mean squared error {with_predictor:.4} filled in, {erasure:.4} erasure code");
        assert!(with_predictor < erasure, "{model:?}: {with_predictor} against {erasure}");
    }
}

#[test]
fn only_a_learnt_predictor_fills_rows_in() {
    let one = code(1);
    let n = one.params().workers();
    let mut rng = rand::rngs::StdRng::seed_from_u64(61);
    let answers = honest(Model::Regression, &one, 10, &mut rng);
    let mut masks = vec![true; 10 * n];
    masks[3] = false;
    for locator in [Locator::Robust, Locator::Paper] {
        assert_eq!(locator.imputed(&one, &answers, 4, &masks).unwrap(), None, "{locator:?}");
    }
    // A file from before the predictor has nothing to predict with.
    let old: Calibration = serde_json::from_str(include_str!("fixtures/calibration-before-predictor.json")).unwrap();
    let old = Locator::Calibrated(Arc::new(old));
    assert_eq!(old.imputed(&one, &answers, 4, &masks).unwrap(), None);
    // A code without liars decodes its stragglers as before.
    let plain = Code::new(CodeParams::builder(K, n).stragglers(1).nodes(NodeFamily::Authors).build().unwrap()).unwrap();
    let learnt = Locator::Calibrated(calibrated(Model::Regression, &one, 300, 62));
    assert_eq!(learnt.imputed(&plain, &answers, 4, &masks).unwrap(), None);
    // And a calibration of another code, or rows of another length, is an error, not a guess.
    assert!(
        learnt
            .imputed(
                &code(2),
                &honest(Model::Regression, &code(2), 2, &mut rng),
                4,
                &vec![true; 2 * code(2).params().workers()]
            )
            .is_err()
    );
    assert!(learnt.imputed(&one, &answers[..10 * n * 2], 2, &masks).is_err());
}

#[test]
fn a_code_for_one_query_finds_its_liar_among_three_responders() {
    // K = 1, A = 1, S = 1: N = 4 workers answer the query itself, and with a straggler three
    // answer, two of them honestly and alike. Leaving one out leaves two, too few for the
    // learnt scores to weigh; the median of three tells the odd one out.
    let code = Code::new(CodeParams::builder(1, 4).stragglers(1).byzantine(1).build().unwrap()).unwrap();
    let groups = 100;
    for model in [Model::Regression, Model::Logits, Model::Probabilities] {
        let locator = Locator::Calibrated(calibrated(model, &code, 300, 5));
        let mut answers = honest(model, &code, groups, &mut rand::rngs::StdRng::seed_from_u64(6));
        let c = model.outputs();
        let mut masks = vec![true; groups * 4];
        for g in 0..groups {
            let (liar, straggler) = (g % 4, (g + 1) % 4);
            answers[(g * 4 + liar) * c..(g * 4 + liar + 1) * c].iter_mut().for_each(|v| *v = 2.0 * *v + 1.0);
            masks[g * 4 + straggler] = false;
        }
        let location = locate(&code, &locator, &answers, c, &masks).unwrap();
        for (g, located) in location.located.iter().enumerate() {
            assert_eq!(located, &vec![g % 4], "{model:?}, group {g}");
        }
    }
}
