//! Private codes: `T` masks interpolated with the `K` queries over the first-kind points of
//! `K + T`, checked against the definition written out here independently of the crate's node
//! tables, plus the bounds and refusals a user can meet.

mod support;

use approxifer_kernels::privacy::{MaskSampler, exposures, most_exposed};
use approxifer_kernels::{Code, CodeParams, Error, Layout, MaskPlacement, NodeFamily, berrut, cpu};
use support::{random_f32, random_masks};

fn private(k: usize, n: usize, s: usize, t: usize, masks: MaskPlacement) -> Code {
    Code::new(CodeParams::builder(k, n).stragglers(s).privacy(t).masks(masks).build().unwrap()).unwrap()
}

/// The encode matrix from the definition: data nodes `cos((2i+1) pi / 2(K+T))` in decreasing
/// order, `mask_positions` of them masks and the rest queries, worker nodes second-kind points
/// of `N`; columns are the queries then the masks.
fn reference_encode(k: usize, n: usize, t: usize, mask_positions: &[usize]) -> Vec<Vec<f64>> {
    let m = k + t;
    let data: Vec<f64> = (0..m).map(|i| ((2 * i + 1) as f64 * std::f64::consts::PI / (2 * m) as f64).cos()).collect();
    let query_positions: Vec<usize> = (0..m).filter(|i| !mask_positions.contains(i)).collect();
    let column_of: Vec<usize> = (0..m)
        .map(|i| match mask_positions.iter().position(|&p| p == i) {
            Some(mask) => k + mask,
            None => query_positions.iter().position(|&p| p == i).unwrap(),
        })
        .collect();
    (0..n)
        .map(|w| {
            let beta = (w as f64 * std::f64::consts::PI / (n - 1) as f64).cos();
            let sorted = berrut::weights(beta, &data);
            let mut row = vec![0.0; m];
            for (i, &weight) in sorted.iter().enumerate() {
                row[column_of[i]] = weight;
            }
            row
        })
        .collect()
}

#[test]
fn the_encode_matrix_mixes_queries_and_masks_as_defined() {
    for (k, n, t, placement, mask_positions) in [
        (8, 10, 1, MaskPlacement::Tail, vec![8]),
        (8, 11, 2, MaskPlacement::Tail, vec![8, 9]),
        (8, 10, 1, MaskPlacement::Interleaved, vec![4]),
        (8, 11, 2, MaskPlacement::Interleaved, vec![3, 6]),
        (5, 12, 3, MaskPlacement::Interleaved, vec![2, 4, 6]),
    ] {
        let code = private(k, n, 1, t, placement);
        assert_eq!(code.params().sources(), k + t);
        let e = code.encode_matrix();
        assert_eq!((e.rows(), e.cols()), (n, k + t));
        let reference = reference_encode(k, n, t, &mask_positions);
        for (w, expected) in reference.iter().enumerate() {
            for (j, &x) in expected.iter().enumerate() {
                let got = e.row(w)[j];
                assert!((got - x).abs() < 1e-12, "K={k} T={t} {placement}: E[{w},{j}] = {got}, expected {x}");
            }
            // Every coded query carries some mask: no worker sees its queries alone.
            assert!(e.row(w)[k..].iter().any(|&m| m.abs() > 1e-3), "worker {w} gets no mask");
        }
    }
}

#[test]
fn mask_placements_give_distinct_positions_inside_the_nodes() {
    for k in 1..20 {
        for t in 1..6 {
            for placement in MaskPlacement::ALL {
                let p = placement.positions(k, t);
                assert_eq!(p.len(), t);
                assert!(p.windows(2).all(|w| w[0] < w[1]) && p[t - 1] < k + t, "{placement} K={k} T={t}: {p:?}");
            }
        }
    }
    assert_eq!("interleaved".parse::<MaskPlacement>(), Ok(MaskPlacement::Interleaved));
    assert!("middle".parse::<MaskPlacement>().unwrap_err().contains("tail or interleaved"));
}

#[test]
fn masked_encoding_is_the_matrix_applied_to_queries_then_masks() {
    let (k, n, t, d, groups) = (4, 8, 2, 9, 5);
    let code = private(k, n, 2, t, MaskPlacement::Interleaved);
    let queries = random_f32(groups * k * d, 1);
    let masks = MaskSampler::seeded(2.0, 3).unwrap().masks(&code, groups, d);
    assert_eq!(masks.len(), groups * t * d);
    let coded = cpu::encode_masked_to_vec(&code, &queries, &masks, d).unwrap();
    let e = code.encode_matrix();
    for b in 0..groups {
        for w in 0..n {
            for c in 0..d {
                let mut expected = 0.0f64;
                for j in 0..k {
                    expected += e.row(w)[j] * f64::from(queries[(b * k + j) * d + c]);
                }
                for m in 0..t {
                    expected += e.row(w)[k + m] * f64::from(masks[(b * t + m) * d + c]);
                }
                let got = f64::from(coded[(b * n + w) * d + c]);
                assert!((got - expected).abs() < 1e-4, "group {b} worker {w} column {c}: {got} vs {expected}");
            }
        }
    }
    // A chosen subset of workers gets exactly those rows.
    let workers = [6, 1, 3];
    let mut rows = vec![0.0f32; groups * workers.len() * d];
    cpu::encode_rows_masked(&code, &workers, &queries, &masks, d, &mut rows).unwrap();
    for b in 0..groups {
        for (r, &w) in workers.iter().enumerate() {
            assert_eq!(rows[(b * 3 + r) * d..][..d], coded[(b * n + w) * d..][..d]);
        }
    }
    // Decoding a private code is decoding at the query nodes, as for any code.
    let outputs = random_f32(groups * n * 3, 4);
    let responders = random_masks(groups, n, 2, 5);
    assert_eq!(cpu::decode_to_vec(&code, &outputs, 3, &responders).unwrap().len(), groups * k * 3);
}

#[test]
fn masks_change_every_coded_query_and_only_through_the_mask_columns() {
    let (k, n, t, d, groups) = (8, 10, 1, 16, 3);
    let code = private(k, n, 1, t, MaskPlacement::Tail);
    let queries = random_f32(groups * k * d, 9);
    let zero = vec![0.0f32; groups * t * d];
    let masks = MaskSampler::seeded(5.0, 1).unwrap().masks(&code, groups, d);
    let plain = cpu::encode_masked_to_vec(&code, &queries, &zero, d).unwrap();
    let masked = cpu::encode_masked_to_vec(&code, &queries, &masks, d).unwrap();
    for (w, (a, b)) in plain.chunks(d).zip(masked.chunks(d)).enumerate() {
        assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3), "coded query {w} is unmasked");
    }
}

#[test]
fn private_codes_refuse_to_encode_without_masks_and_plain_codes_refuse_masks() {
    let code = private(4, 7, 1, 2, MaskPlacement::Tail);
    let queries = random_f32(2 * 4 * 3, 1);
    let refused = cpu::encode_to_vec(&code, &queries, 3).unwrap_err();
    assert!(matches!(refused, Error::MasksMismatch { privacy: 2, .. }), "{refused}");
    let mut coded = vec![0.0f32; 2 * 7 * 3];
    assert!(matches!(
        cpu::encode_rows(&code, &[0, 1], &queries, 3, &mut coded[..12]),
        Err(Error::MasksMismatch { .. })
    ));
    // Masks for one group fewer than the queries: a shape error, nothing written.
    let short = vec![1.0f32; 2 * 3];
    let refused = cpu::encode_masked(&code, &queries, &short, 3, &mut coded).unwrap_err();
    assert!(matches!(refused, Error::ShapeMismatch { what: "masks", expected: 12, actual: 6 }), "{refused}");
    assert!(coded.iter().all(|&x| x == 0.0));

    let plain = Code::new(CodeParams::builder(4, 6).stragglers(1).build().unwrap()).unwrap();
    let refused = cpu::encode_masked_to_vec(&plain, &queries, &short, 3).unwrap_err();
    assert!(matches!(refused, Error::MasksMismatch { privacy: 0, .. }), "{refused}");
}

#[test]
fn privacy_bounds_are_typed_errors() {
    // N >= K + T + S.
    let e = CodeParams::builder(8, 10).stragglers(1).privacy(2).build().unwrap_err();
    assert!(matches!(e, Error::TooFewWorkersForPrivacy { workers: 10, needed: 11, .. }), "{e}");
    assert!(e.to_string().contains("N >= 11"), "{e}");
    // With A > 0 the locator sees K + T data nodes: 2(K + T) + 2A + S - 1.
    let e = CodeParams::builder(4, 10).byzantine(1).privacy(1).build().unwrap_err();
    assert!(matches!(e, Error::TooFewWorkersForPrivacy { needed: 11, .. }), "{e}");
    assert!(CodeParams::builder(4, 11).byzantine(1).privacy(1).build().is_ok());
    // The systematic layout hands raw queries out.
    let e = CodeParams::builder(4, 8).privacy(1).layout(Layout::Systematic).build().unwrap_err();
    assert_eq!(e, Error::PrivacyNeedsMixing { privacy: 1 });
    // K = 2, T = 1: query 1 sits at cos(pi / 2), which is worker 2's node when N = 5.
    let params = CodeParams::builder(2, 5).stragglers(2).privacy(1).build().unwrap();
    assert_eq!(Code::new(params).unwrap_err(), Error::UnmaskedWorker { worker: 2, query: 1 });
    let params = CodeParams::builder(2, 5).stragglers(2).privacy(1).nodes(NodeFamily::Authors).build().unwrap();
    assert!(Code::new(params).is_ok());
    // A service deriving N takes the next N whose nodes mask every query.
    let code = Code::with_masked_workers(CodeParams::builder(2, 5).stragglers(2).privacy(1)).unwrap();
    assert_eq!(code.params().workers(), 6);
    let e = Code::with_masked_workers(CodeParams::builder(2, 4).stragglers(2).privacy(1)).unwrap_err();
    assert!(matches!(e, Error::TooFewWorkersForPrivacy { .. }), "{e}");
}

#[test]
fn the_erasure_code_of_a_private_byzantine_code_keeps_its_masks() {
    let code = Code::new(CodeParams::builder(3, 12).stragglers(1).byzantine(1).privacy(1).build().unwrap()).unwrap();
    let erasure = code.erasure_code().unwrap();
    assert_eq!((erasure.params().privacy(), erasure.params().stragglers()), (1, 2));
    assert_eq!(erasure.encode_matrix(), code.encode_matrix());
}

/// The signal-to-noise ratio of query `j` seen by workers `w` (one or two), written out with
/// the closed-form inverse of the 1x1 or 2x2 covariance.
fn snr_by_hand(code: &Code, j: usize, w: &[usize], sigma: f64) -> f64 {
    let e = code.encode_matrix();
    let k = code.params().queries();
    let var = |source: usize| if source < k { 1.0 } else { sigma * sigma };
    let others: Vec<usize> = (0..e.cols()).filter(|&s| s != j).collect();
    let cov = |x: usize, y: usize| others.iter().map(|&s| var(s) * e.row(x)[s] * e.row(y)[s]).sum::<f64>();
    match *w {
        [a] => e.row(a)[j].powi(2) / cov(a, a),
        [a, b] => {
            let (p, q, r) = (cov(a, a), cov(a, b), cov(b, b));
            let (x, y) = (e.row(a)[j], e.row(b)[j]);
            (x * x * r - 2.0 * x * y * q + y * y * p) / (p * r - q * q)
        }
        _ => unreachable!("one or two colluders"),
    }
}

#[test]
fn exposure_is_the_best_coalition_by_linear_signal_to_noise() {
    for (t, colluders) in [(1, 1), (2, 2), (2, 1), (0, 1), (0, 2)] {
        for placement in MaskPlacement::ALL {
            let code = Code::with_masked_workers(
                CodeParams::builder(5, 5 + t + 1).stragglers(1).privacy(t).masks(placement).nodes(NodeFamily::Authors),
            )
            .unwrap();
            let n = code.params().workers();
            let exposures = exposures(&code, colluders, 1.5).unwrap();
            assert_eq!(exposures.len(), 5);
            for exposure in &exposures {
                let coalitions: Vec<Vec<usize>> = if colluders == 1 {
                    (0..n).map(|a| vec![a]).collect()
                } else {
                    (0..n).flat_map(|a| (a + 1..n).map(move |b| vec![a, b])).collect()
                };
                let best = coalitions
                    .iter()
                    .map(|w| (snr_by_hand(&code, exposure.query, w, 1.5), w))
                    .fold((f64::NEG_INFINITY, &coalitions[0]), |b, c| if c.0 > b.0 { c } else { b });
                // The crate's whisper of ridge moves near-singular coalitions' ratios slightly.
                if best.0.is_infinite() {
                    // A worker on query j's node sees it alone: the crate's ratio is just huge.
                    assert!(exposure.snr > 1e9, "T {t}: {exposure:?}");
                    continue;
                }
                let tolerance = 1e-6 * best.0.abs().max(1.0);
                assert!((exposure.snr - best.0).abs() <= tolerance, "T {t}: {exposure:?} vs {best:?}");
                // Ties between coalitions are broken either way: the chosen one must be as good.
                let chosen = snr_by_hand(&code, exposure.query, &exposure.workers, 1.5);
                assert!((chosen - best.0).abs() <= tolerance, "T {t}, {placement}: {exposure:?} vs {best:?}");
            }
            let worst = most_exposed(&code, colluders, 1.5).unwrap();
            assert!(exposures.iter().all(|e| e.snr <= worst.snr));
        }
    }
}

#[test]
fn t_colluders_are_drowned_by_larger_masks_and_t_plus_one_are_not() {
    let code = Code::with_masked_workers(CodeParams::builder(8, 11).stragglers(1).privacy(2)).unwrap();
    let snr = |colluders, sigma| most_exposed(&code, colluders, sigma).unwrap().snr;
    // T colluders: every mask stays in any combination of their coded queries, so a large
    // enough scale drowns the query, at last as 1 / sigma^2. The tail masks' weights on the
    // two workers nearest query 0 are nearly proportional (both masks sit far away, at one
    // end), so their combination almost cancels both: it takes a very large scale.
    let scales = [1.0, 1e2, 1e4, 1e5, 1e6];
    let drowned: Vec<f64> = scales.iter().map(|&s| snr(2, s)).collect();
    assert!(drowned.windows(2).all(|w| w[1] < w[0]), "{drowned:?}");
    assert!(drowned[4] < 0.02 * drowned[3], "{drowned:?}");
    // T + 1 colluders can cancel both masks: the ratio stops falling with the scale.
    let plateau: Vec<f64> = scales.iter().map(|&s| snr(3, s)).collect();
    assert!(plateau[4] > 0.9 * plateau[3] && plateau[4] > 100.0 * drowned[4], "{plateau:?} {drowned:?}");
}

#[test]
fn exposure_refuses_impossible_coalitions_and_scales() {
    let code = private(4, 7, 1, 2, MaskPlacement::Tail);
    assert_eq!(exposures(&code, 0, 1.0).unwrap_err(), Error::InvalidColluders { colluders: 0, workers: 7 });
    assert_eq!(exposures(&code, 8, 1.0).unwrap_err(), Error::InvalidColluders { colluders: 8, workers: 7 });
    assert!(matches!(exposures(&code, 2, 0.0).unwrap_err(), Error::InvalidMaskSigma { .. }));
    assert!(matches!(most_exposed(&code, 2, f64::NAN).unwrap_err(), Error::InvalidMaskSigma { .. }));
}

#[test]
fn large_coalitions_are_grown_greedily_from_the_best_single_worker() {
    // C(30, 5) = 142506 coalitions are too many to try one by one: the search is greedy.
    let params = CodeParams::builder(8, 30).stragglers(1).privacy(2).nodes(NodeFamily::Authors);
    let code = Code::with_masked_workers(params).unwrap();
    let (one, five) = (exposures(&code, 1, 4.0).unwrap(), exposures(&code, 5, 4.0).unwrap());
    for (single, group) in one.iter().zip(&five) {
        assert_eq!(group.workers.len(), 5, "{group:?}");
        assert!(group.workers.windows(2).all(|w| w[0] < w[1]), "increasing, distinct: {group:?}");
        // It starts from the best single worker, and more workers never see less.
        assert!(group.workers.contains(&single.workers[0]), "{single:?} {group:?}");
        assert!(group.snr >= single.snr * (1.0 - 1e-9), "{single:?} {group:?}");
    }
}
