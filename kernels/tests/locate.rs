//! Byzantine location: the paper's locator against the theory it rests on (exact for a linear
//! model), both locators against gross liars, non-finite answers, typed errors, and a property
//! test that no input makes the robust decoder panic or leak a NaN.

use approxifer_kernels::{Code, CodeParams, Error, Locator, NodeFamily, cpu, locate};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// `N = 2K + 2A + S - 1` workers on the authors' nodes, the evaluation's default.
fn byzantine_code(k: usize, a: usize, s: usize) -> Code {
    let n = 2 * k + 2 * a + s - 1;
    Code::new(CodeParams::builder(k, n).stragglers(s).byzantine(a).nodes(NodeFamily::Authors).build().unwrap()).unwrap()
}

/// Honest answers of a linear model: the coded rows of random predictions, `[B, N, C]`.
fn linear_answers(code: &Code, groups: usize, c: usize, rng: &mut impl Rng) -> Vec<f64> {
    let k = code.params().queries();
    let predictions: Vec<f64> = (0..groups * k * c).map(|_| rng.random_range(-10.0..10.0)).collect();
    cpu::encode_to_vec(code, &predictions, c).unwrap()
}

/// Picks `a` distinct liars per group and adds `noise(rng)` to each of their values.
fn corrupt(
    answers: &mut [f64],
    code: &Code,
    c: usize,
    rng: &mut impl Rng,
    mut noise: impl FnMut(&mut dyn rand::RngCore) -> f64,
) -> Vec<Vec<usize>> {
    let (n, a) = (code.params().workers(), code.params().byzantine());
    answers
        .chunks_exact_mut(n * c)
        .map(|group| {
            let mut liars = rand::seq::index::sample(rng, n, a).into_vec();
            liars.sort_unstable();
            for &w in &liars {
                group[w * c..(w + 1) * c].iter_mut().for_each(|v| *v += noise(rng));
            }
            liars
        })
        .collect()
}

#[test]
fn the_papers_locator_is_exact_for_a_linear_model() {
    // For a linear model, y(z) d(z) is a polynomial of degree K - 1: rational Berlekamp-Welch
    // then locates A errors of any size exactly (ALGORITHM.md).
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for a in 1..=3 {
        let code = byzantine_code(4, a, 0);
        let (groups, c) = (40, 3);
        let mut answers = linear_answers(&code, groups, c, &mut rng);
        let liars = corrupt(&mut answers, &code, c, &mut rng, |r| if r.random_bool(0.5) { 3.0 } else { -3.0 });
        let masks = vec![true; groups * code.params().workers()];
        let found = locate(&code, &Locator::Paper, &answers, c, &masks).unwrap();
        assert_eq!(found.located, liars, "A = {a}");
    }
}

#[test]
fn both_locators_find_gross_liars_and_decoding_recovers_the_honest_answer() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    for a in 1..=3 {
        let code = byzantine_code(4, a, 1);
        let (n, groups, c) = (code.params().workers(), 30, 5);
        let honest = linear_answers(&code, groups, c, &mut rng);
        let mut answers = honest.clone();
        let liars = corrupt(&mut answers, &code, c, &mut rng, |r| 1e4 * r.random_range(-1.0..1.0));
        // One straggler per group, never a liar.
        let mut masks = vec![true; groups * n];
        for (mask, bad) in masks.chunks_exact_mut(n).zip(&liars) {
            let straggler = (0..n).find(|w| !bad.contains(w)).unwrap();
            mask[straggler] = false;
        }
        for locator in Locator::UNCALIBRATED {
            let mut decoded = vec![0.0; groups * 4 * c];
            let located = cpu::decode_robust(&code, &locator, &answers, c, &masks, &mut decoded).unwrap();
            assert_eq!(located, liars, "{locator}, A = {a}");
            // The same as decoding the honest answers from the same responders.
            let location = locate(&code, &locator, &answers, c, &masks).unwrap();
            let expected = cpu::decode_to_vec(&code.erasure_code().unwrap(), &honest, c, &location.masks).unwrap();
            assert_eq!(decoded, expected, "{locator}, A = {a}");
        }
    }
}

#[test]
fn the_robust_locator_removes_few_honest_workers() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let code = byzantine_code(12, 3, 0);
    let (n, groups, c) = (code.params().workers(), 200, 10);
    let answers = linear_answers(&code, groups, c, &mut rng);
    let masks = vec![true; groups * n];
    let robust = locate(&code, &Locator::Robust, &answers, c, &masks).unwrap();
    let removed: usize = robust.located.iter().map(Vec::len).sum();
    // Smooth answers are the consistency score's hard case (its residuals are largest at the
    // end nodes): about 5% here against about 1% on a CNN's logits (README).
    assert!(removed as f64 <= 0.06 * (groups * n) as f64, "{removed} honest workers removed");
    // The paper's always removes A.
    let paper = locate(&code, &Locator::Paper, &answers, c, &masks).unwrap();
    assert!(paper.located.iter().all(|l| l.len() == 3));
}

#[test]
fn non_finite_answers_are_removed_first_and_never_reach_the_answer() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let code = byzantine_code(3, 2, 0);
    let (n, c) = (code.params().workers(), 4);
    let mut answers: Vec<f32> = linear_answers(&code, 3, c, &mut rng).iter().map(|&v| v as f32).collect();
    answers[2 * c + 1] = f32::NAN; // group 0, worker 2
    answers[n * c + 5 * c] = f32::INFINITY; // group 1, worker 5
    answers[n * c + 6 * c + 3] = f32::NEG_INFINITY; // group 1, worker 6
    answers[2 * n * c + 4 * c..2 * n * c + 5 * c].fill(1e6); // group 2, worker 4: finite but absurd
    let masks = vec![true; 3 * n];
    for locator in Locator::UNCALIBRATED {
        let mut decoded = vec![0.0f32; 3 * 3 * c];
        let located = cpu::decode_robust(&code, &locator, &answers, c, &masks, &mut decoded).unwrap();
        assert!(located[0].contains(&2) && located[1] == [5, 6] && located[2].contains(&4), "{locator}: {located:?}");
        assert!(decoded.iter().all(|v| v.is_finite() && v.abs() < 100.0), "{locator}: {decoded:?}");
    }
}

#[test]
fn too_many_non_finite_answers_is_a_typed_error_and_writes_nothing() {
    let code = byzantine_code(2, 1, 0);
    let (n, c) = (code.params().workers(), 2);
    let mut answers = vec![1.0f32; 2 * n * c];
    answers[n * c] = f32::NAN;
    answers[n * c + c] = f32::NAN;
    let mut decoded = vec![7.0f32; 2 * 2 * c];
    let err = cpu::decode_robust(&code, &Locator::Robust, &answers, c, &vec![true; 2 * n], &mut decoded).unwrap_err();
    assert_eq!(err, Error::TooManyFaulty { group: 1, non_finite: 2, byzantine: 1 });
    assert!(err.to_string().contains("non-finite answers <= A violated in group 1"));
    assert!(decoded.iter().all(|&v| v == 7.0));
    // Without a Byzantine budget a NaN answer is refused, not decoded.
    let plain = Code::new(CodeParams::builder(2, 3).build().unwrap()).unwrap();
    let err = locate(&plain, &Locator::Robust, &[1.0, f32::NAN, 1.0], 1, &[true; 3]).unwrap_err();
    assert_eq!(err, Error::TooManyFaulty { group: 0, non_finite: 1, byzantine: 0 });
}

#[test]
fn without_a_byzantine_budget_robust_decoding_is_plain_decoding() {
    let code = Code::new(CodeParams::builder(3, 5).stragglers(1).build().unwrap()).unwrap();
    let answers: Vec<f64> = (0..2 * 5 * 2).map(|i| (i as f64).sin()).collect();
    let masks = [true, true, false, true, true, true, true, true, true, false];
    let mut decoded = vec![0.0; 2 * 3 * 2];
    let located = cpu::decode_robust(&code, &Locator::Robust, &answers, 2, &masks, &mut decoded).unwrap();
    assert_eq!(located, vec![Vec::<usize>::new(); 2]);
    assert_eq!(decoded, cpu::decode_to_vec(&code, &answers, 2, &masks).unwrap());
}

#[test]
fn the_erasure_code_has_the_same_nodes_and_weights() {
    let code = byzantine_code(5, 2, 1);
    let erasure = code.erasure_code().unwrap();
    assert_eq!((erasure.params().byzantine(), erasure.params().stragglers()), (0, 3));
    assert_eq!(erasure.beta(), code.beta());
    assert_eq!(erasure.encode_matrix(), code.encode_matrix());
    let responders = code.responders(&(0..code.params().workers()).collect::<Vec<_>>()).unwrap();
    assert_eq!(erasure.decode_matrix(&responders).unwrap(), code.decode_matrix(&responders).unwrap());
}

#[test]
fn locators_parse_from_their_names() {
    for locator in Locator::UNCALIBRATED {
        assert_eq!(locator.name().parse::<Locator>().as_ref(), Ok(&locator));
    }
    assert!("bw".parse::<Locator>().unwrap_err().contains("robust or paper"));
}

/// Any value: ordinary, huge, tiny, zero, NaN or infinite.
fn any_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -100.0f32..100.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => prop::num::f32::ANY,
        1 => Just(0.0f32),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary codes, responder sets and values: never a panic; either a typed error or a
    /// location whose removals include every non-finite responder, at most A of them, and an
    /// answer free of NaN.
    #[test]
    fn robust_decoding_never_panics_nor_leaks_nan(
        k in 1usize..5, a in 0usize..4, s in 0usize..3, c in 1usize..6, groups in 1usize..4,
        seed in any::<u64>(), values in prop::collection::vec(any_value(), 4 * 16 * 6),
        locator in prop::sample::select(Locator::UNCALIBRATED.to_vec()),
    ) {
        let n = 2 * k + 2 * a + s - 1;
        let n = n.max(k + s).max(2);
        let code = Code::new(CodeParams::builder(k, n).stragglers(s).byzantine(a).build().unwrap()).unwrap();
        let answers: Vec<f32> = values.iter().cycle().take(groups * n * c).copied().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut masks = vec![true; groups * n];
        for mask in masks.chunks_exact_mut(n) {
            let missing = rng.random_range(0..=s);
            for w in rand::seq::index::sample(&mut rng, n, missing) {
                mask[w] = false;
            }
        }
        let mut decoded = vec![0.0f32; groups * k * c];
        match cpu::decode_robust(&code, &locator, &answers, c, &masks, &mut decoded) {
            Err(Error::TooManyFaulty { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
            Ok(located) => {
                for (g, removed) in located.iter().enumerate() {
                    prop_assert!(removed.len() <= a);
                    for w in 0..n {
                        let row = &answers[(g * n + w) * c..(g * n + w + 1) * c];
                        if masks[g * n + w] && row.iter().any(|v| !v.is_finite()) {
                            prop_assert!(removed.contains(&w), "non-finite worker {w} kept in group {g}");
                        }
                    }
                }
                prop_assert!(decoded.iter().all(|v| !v.is_nan()), "NaN in {decoded:?}");
            }
        }
    }
}

#[test]
fn workers_needed_is_the_bound_the_builder_enforces() {
    for (k, s, a) in [(2, 0, 0), (3, 2, 0), (12, 0, 1), (12, 0, 3), (4, 2, 2)] {
        let n = CodeParams::workers_needed(k, s, a);
        assert!(CodeParams::builder(k, n).stragglers(s).byzantine(a).build().is_ok(), "{k} {s} {a}");
        assert!(CodeParams::builder(k, n - 1).stragglers(s).byzantine(a).build().is_err(), "{k} {s} {a}");
    }
    assert_eq!(CodeParams::workers_needed(12, 0, 3), 29);
    assert_eq!(CodeParams::workers_needed(usize::MAX, 1, 1), usize::MAX - 1);
}

#[test]
fn near_one_hot_answers_do_not_look_atypical() {
    // Class probabilities: every low rank sits at about 0, differing in the sixth decimal.
    // None of that is evidence against a row (the robust locator compares probabilities as
    // log-ratios, where they are logits spread over a few units, as a softmax's are).
    let code = byzantine_code(4, 1, 0);
    let (n, c) = (code.params().workers(), 5);
    let mut answers = vec![0.0f64; n * c];
    for (w, row) in answers.chunks_exact_mut(c).enumerate() {
        row.iter_mut().enumerate().for_each(|(i, v)| *v = 1e-6 * (1 + (w * 7 + i * 3) % 11) as f64);
        row[w % c] = 1.0 - row.iter().sum::<f64>();
    }
    let location = locate(&code, &Locator::Robust, &answers, c, &vec![true; n]).unwrap();
    assert_eq!(location.located, vec![Vec::<usize>::new()]);
}
