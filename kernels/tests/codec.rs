//! The codec's mathematics: parameters, nodes, Berrut weights, encode and decode matrices.
//! Checked against algebraic laws, hand-derived answers and the independent reference.

mod reference;

use approxifer_kernels::{Code, CodeParams, Error, Layout, MAX_WORKERS, Matrix, NodeFamily, Tolerance, berrut};
use proptest::prelude::*;

fn code(k: usize, n: usize, s: usize) -> Code {
    Code::new(CodeParams::builder(k, n).stragglers(s).build().unwrap()).unwrap()
}

fn all_layouts_and_families() -> impl Iterator<Item = (Layout, NodeFamily)> {
    [Layout::NonSystematic, Layout::Systematic]
        .into_iter()
        .flat_map(|l| NodeFamily::ALL.into_iter().map(move |f| (l, f)))
}

/// Every valid small code, every layout and family.
fn sweep() -> impl Iterator<Item = Code> {
    all_layouts_and_families().flat_map(|(layout, nodes)| {
        (1..=16).flat_map(move |k| {
            (k.max(2)..=k + 12).map(move |n| {
                Code::new(CodeParams::builder(k, n).stragglers(n - k).nodes(nodes).layout(layout).build().unwrap())
                    .unwrap()
            })
        })
    })
}

fn assert_rows_sum_to_one(m: &Matrix, what: &str) {
    for (r, row) in m.iter_rows().enumerate() {
        let sum: f64 = row.iter().sum();
        assert!(Tolerance::STRICT.is_close(sum, 1.0), "{what}: row {r} sums to {sum}");
    }
}

fn assert_unit_row(row: &[f64], at: usize, what: &str) {
    for (c, &v) in row.iter().enumerate() {
        assert_eq!(v, if c == at { 1.0 } else { 0.0 }, "{what}: {row:?} is not e_{at}");
    }
}

// ---- known answers -------------------------------------------------------------------

#[test]
fn k2_n3_by_hand() {
    // alpha = ±1/√2, beta = 1, 0, -1. At x = 1: w ∝ (1/(1 - 1/√2), -1/(1 + 1/√2)), which
    // normalises to (1/2 + 1/√2, 1/2 - 1/√2); x = 0 is midway, so (1/2, 1/2); by symmetry the
    // last row mirrors the first.
    let code = code(2, 3, 1);
    let h = std::f64::consts::FRAC_1_SQRT_2;
    let expected = [[0.5 + h, 0.5 - h], [0.5, 0.5], [0.5 - h, 0.5 + h]];
    Tolerance::STRICT
        .check(code.encode_matrix().as_slice().iter().copied(), expected.iter().flatten().copied())
        .unwrap();
    // Decoding from workers 0 and 2 (nodes 1 and -1) at alpha_0 = 1/√2: linear interpolation
    // between the ends, weights ((1 + 1/√2)/2, (1 - 1/√2)/2).
    let d = code.decode_matrix(&code.responders(&[2, 0]).unwrap()).unwrap();
    let expected = [[(1.0 + h) / 2.0, (1.0 - h) / 2.0], [(1.0 - h) / 2.0, (1.0 + h) / 2.0]];
    Tolerance::STRICT.check(d.as_slice().iter().copied(), expected.iter().flatten().copied()).unwrap();
}

#[test]
fn node_values_follow_the_specification() {
    for (layout, family) in all_layouts_and_families() {
        let params = CodeParams::builder(5, 11).nodes(family).layout(layout).build().unwrap();
        let code = Code::new(params).unwrap();
        let beta = reference::worker_nodes(family.name(), 11);
        Tolerance::STRICT.check(code.beta(), beta.iter().copied()).unwrap();
        let alpha = match layout {
            Layout::NonSystematic => reference::chebyshev1(5),
            Layout::Systematic => code.nodes().systematic_workers.as_ref().unwrap().iter().map(|&w| beta[w]).collect(),
        };
        Tolerance::STRICT.check(code.alpha(), alpha).unwrap();
    }
}

#[test]
fn every_family_is_strictly_decreasing() {
    for family in NodeFamily::ALL {
        for n in family.min_nodes()..200 {
            let values: Vec<f64> = family.angles(n).iter().map(|a| a.cos()).collect();
            assert!(values.windows(2).all(|w| w[0] > w[1]), "{family} N = {n}: {values:?}");
        }
    }
}

#[test]
fn systematic_layout_spreads_data_nodes_and_sends_raw_queries() {
    let params = CodeParams::builder(4, 9).stragglers(2).layout(Layout::Systematic).build().unwrap();
    let code = Code::new(params).unwrap();
    let chosen = code.nodes().systematic_workers.clone().unwrap();
    // First-kind points of 9 at angles (2n+1)/18 pi; targets (2j+1)/8 pi -> n = 1, 3, 5, 7.
    assert_eq!(chosen, [1, 3, 5, 7]);
    for (j, &w) in chosen.iter().enumerate() {
        assert_unit_row(code.encode_matrix().row(w), j, "systematic worker");
    }
}

// ---- algebraic laws ------------------------------------------------------------------

#[test]
fn weights_sum_to_one_and_are_finite_for_every_small_code() {
    for code in sweep() {
        let what = format!("{:?}", code.params());
        assert_rows_sum_to_one(code.encode_matrix(), &what);
        let all: Vec<usize> = (0..code.params().workers()).collect();
        let d = code.decode_matrix(&code.responders(&all).unwrap()).unwrap();
        assert_rows_sum_to_one(&d, &what);
        // The fewest responders allowed: the first K workers, and the last K.
        let k = code.params().queries();
        for few in [&all[..k], &all[all.len() - k..]] {
            let d = code.decode_matrix(&code.responders(few).unwrap()).unwrap();
            assert!(d.as_slice().iter().all(|w| w.is_finite()), "{what}: {d:?}");
            assert_rows_sum_to_one(&d, &what);
        }
    }
}

#[test]
fn berrut_interpolates_through_its_nodes() {
    let nodes = [0.9, 0.4, 0.1, -0.3, -0.8];
    for (i, &z) in nodes.iter().enumerate() {
        assert_unit_row(&berrut::weights(z, &nodes), i, "at a node");
    }
    // Decoding recovers a worker's own output where a data node sits on its node.
    let code = code(3, 5, 0); // alpha_1 = beta_2 = 0
    let d = code.decode_matrix(&code.responders(&[0, 1, 2, 3, 4]).unwrap()).unwrap();
    assert_unit_row(d.row(1), 2, "decode at a coincident node");
}

#[test]
fn coincident_nodes_give_unit_weights_not_nan() {
    // Pairs named in ALGORITHM.md, plus every coincidence of the sweep.
    for (k, n, data, worker) in [(3, 5, 1, 2), (8, 17, 3, 7)] {
        let c = code(k, n, 0);
        assert_eq!(c.nodes().data[data], c.nodes().workers[worker], "K = {k}, N = {n}");
        assert_unit_row(c.encode_matrix().row(worker), data, "named coincidence");
    }
    let mut seen = 0;
    for code in sweep() {
        let (k, n) = (code.params().queries(), code.params().workers());
        for j in 0..k {
            for w in 0..n {
                if code.nodes().data[j] == code.nodes().workers[w] {
                    seen += 1;
                    assert_unit_row(code.encode_matrix().row(w), j, &format!("{:?}", code.params()));
                }
            }
        }
    }
    assert!(seen > 100, "the sweep should meet many coincidences, met {seen}");
}

#[test]
fn constants_are_reproduced() {
    for code in sweep().step_by(7) {
        let k = code.params().queries();
        let queries = vec![vec![-2.5]; k];
        let e: Vec<Vec<f64>> = code.encode_matrix().to_nested();
        for row in reference::apply(&e, &queries) {
            assert!(Tolerance::STRICT.is_close(row[0], -2.5), "{:?}: {}", code.params(), row[0]);
        }
    }
}

#[test]
fn matrices_agree_with_the_independent_reference() {
    for code in sweep() {
        let (alpha, beta) = (code.alpha(), code.beta());
        let e = reference::encode_matrix(&alpha, &beta);
        let diff = reference::max_abs_diff(&code.encode_matrix().to_nested(), &e);
        assert!(diff < 1e-9, "{:?}: encode differs by {diff}", code.params());
    }
}

// ---- one test per error variant ----------------------------------------------------------

#[test]
fn no_queries() {
    let e = CodeParams::builder(0, 3).build().unwrap_err();
    assert_eq!(e, Error::NoQueries);
    assert!(e.to_string().contains("K >= 1"), "{e}");
}

#[test]
fn too_many_workers() {
    let e = CodeParams::builder(2, MAX_WORKERS + 1).build().unwrap_err();
    assert_eq!(e, Error::TooManyWorkers { workers: MAX_WORKERS + 1, max: MAX_WORKERS });
}

#[test]
fn too_few_workers() {
    let e = CodeParams::builder(8, 9).stragglers(2).build().unwrap_err();
    assert_eq!(e, Error::TooFewWorkers { workers: 9, queries: 8, stragglers: 2 });
    assert_eq!(e.to_string(), "N >= K + S violated: N = 9 < K + S = 8 + 2 = 10");
    // Huge numbers are reported, not overflowed.
    let e = CodeParams::builder(usize::MAX, 9).stragglers(usize::MAX).build().unwrap_err();
    assert!(matches!(e, Error::TooFewWorkers { .. }), "{e}");
    let _ = e.to_string();
}

#[test]
fn too_few_workers_for_byzantine() {
    let e = CodeParams::builder(12, 24).byzantine(1).build().unwrap_err();
    assert_eq!(e, Error::TooFewWorkersForByzantine { workers: 24, queries: 12, byzantine: 1, stragglers: 0 });
    assert_eq!(e.to_string(), "N >= 2K + 2A + S - 1 violated: N = 24 < 2*12 + 2*1 + 0 - 1 = 25");
    assert!(CodeParams::builder(12, 25).byzantine(1).build().is_ok());
    assert!(CodeParams::builder(12, 25).byzantine(1).stragglers(1).build().is_err());
    assert!(CodeParams::builder(12, 26).byzantine(1).stragglers(1).build().is_ok());
    let e = CodeParams::builder(1, 5).byzantine(usize::MAX).build().unwrap_err();
    assert!(matches!(e, Error::TooFewWorkersForByzantine { .. }), "{e}");
    let _ = e.to_string();
}

#[test]
fn too_few_workers_for_nodes() {
    let e = CodeParams::builder(1, 1).build().unwrap_err();
    assert_eq!(e, Error::TooFewWorkersForNodes { family: NodeFamily::Chebyshev2, workers: 1, min: 2 });
    assert!(CodeParams::builder(1, 1).nodes(NodeFamily::Chebyshev1).build().is_ok());
}

#[test]
fn responder_out_of_range() {
    let e = code(2, 4, 1).responders(&[0, 1, 4]).unwrap_err();
    assert_eq!(e, Error::ResponderOutOfRange { worker: 4, workers: 4 });
}

#[test]
fn duplicate_responder() {
    let e = code(2, 4, 1).responders(&[3, 1, 3]).unwrap_err();
    assert_eq!(e, Error::DuplicateResponder { worker: 3 });
}

#[test]
fn too_many_responders() {
    let e = code(2, 3, 0).responders(&[0, 1, 2, 0]).unwrap_err();
    assert_eq!(e, Error::TooManyResponders { received: 4, workers: 3 });
}

#[test]
fn not_enough_responders() {
    let e = code(4, 6, 1).responders(&[0, 1, 2, 3]).unwrap_err();
    assert_eq!(e, Error::NotEnoughResponders { group: None, received: 4, workers: 6, stragglers: 1 });
    assert_eq!(e.to_string(), "responders >= N - S violated: 4 < 6 - 1 = 5");
    let e = code(4, 6, 1).responders_from_mask(&[true, false, true, false, true, true]).unwrap_err();
    assert!(matches!(e, Error::NotEnoughResponders { received: 4, .. }), "{e}");
}

#[test]
fn shape_mismatch() {
    let e = code(2, 3, 0).responders_from_mask(&[true, true]).unwrap_err();
    assert_eq!(e, Error::ShapeMismatch { what: "responder mask", expected: 3, actual: 2 });
}

// `EmptyRows`, `NotWholeGroups` and `NonFiniteWeight` concern batches: see tests/cpu.rs.

// ---- properties ------------------------------------------------------------------------

/// A valid code and a valid responder set for it.
fn code_and_responders() -> impl Strategy<Value = (Layout, NodeFamily, usize, usize, usize, Vec<usize>)> {
    (
        prop::sample::select(vec![Layout::NonSystematic, Layout::Systematic]),
        prop::sample::select(NodeFamily::ALL.to_vec()),
        1usize..24,
        0usize..30,
    )
        .prop_flat_map(|(layout, family, k, extra)| {
            let n = (k + extra).max(2);
            (Just(layout), Just(family), Just(k), Just(n), 0..=n - k)
        })
        .prop_flat_map(|(layout, family, k, n, s)| {
            let responders = prop::sample::subsequence((0..n).collect::<Vec<_>>(), n - s..=n).prop_shuffle();
            (Just(layout), Just(family), Just(k), Just(n), Just(s), responders)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_matrix_matches_reference((layout, family, k, n, s, responders) in code_and_responders()) {
        let params = CodeParams::builder(k, n).stragglers(s).nodes(family).layout(layout).build().unwrap();
        let code = Code::new(params).unwrap();
        let set = code.responders(&responders).unwrap();
        let d = code.decode_matrix(&set).unwrap();
        prop_assert!(d.as_slice().iter().all(|w| w.is_finite()));
        for row in d.iter_rows() {
            prop_assert!(Tolerance::STRICT.is_close(row.iter().sum(), 1.0));
        }
        let expected = reference::decode_matrix(&code.alpha(), &code.beta(), set.as_slice());
        let diff = reference::max_abs_diff(&d.to_nested(), &expected);
        prop_assert!(diff < 1e-9, "{:?} {:?}: differs by {}", params, set, diff);
    }

    #[test]
    fn weights_interpolate_at_random_node_sets(mut nodes in prop::collection::btree_set(-1000i32..1000, 1..20)) {
        let nodes: Vec<f64> = std::mem::take(&mut nodes).into_iter().rev().map(|v| f64::from(v) / 1000.0).collect();
        for (i, &z) in nodes.iter().enumerate() {
            let w = berrut::weights(z, &nodes);
            prop_assert_eq!(w[i], 1.0);
            prop_assert_eq!(w.iter().sum::<f64>(), 1.0);
        }
        let w = berrut::weights(0.123_456_7, &nodes);
        prop_assert!(Tolerance::STRICT.is_close(w.iter().sum(), 1.0));
    }
}

#[test]
fn a_partial_groups_code_keeps_all_but_k_and_takes_the_fewest_workers() {
    let params = CodeParams::builder(4, 12).stragglers(1).byzantine(1).nodes(NodeFamily::Authors).build().unwrap();
    let code = Code::new(params).unwrap();
    for k in 1..4 {
        let p = *code.for_queries(k).unwrap().params();
        let kept = (p.stragglers(), p.byzantine(), p.privacy(), p.nodes(), p.layout());
        assert_eq!(kept, (1, 1, 0, NodeFamily::Authors, code.params().layout()), "K' = {k}");
        let least = CodeParams::workers_needed(k, 1, 1).max(NodeFamily::Authors.min_nodes());
        assert_eq!((p.queries(), p.workers()), (k, least), "K' = {k}");
    }
    // A private code's partial groups keep every query masked, within the code's workers.
    let private = Code::with_masked_workers(CodeParams::builder(8, 11).stragglers(1).privacy(2)).unwrap();
    for k in 1..8 {
        let partial = private.for_queries(k).unwrap();
        assert_eq!((partial.params().queries(), partial.params().privacy()), (k, 2));
        assert!(partial.params().workers() <= 11, "K' = {k}: {:?}", partial.params());
    }
}
