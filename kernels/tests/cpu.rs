//! The CPU reference kernels against the independent reference, in every storage type.

mod reference;
mod support;

use approxifer_kernels::cpu::{self, Element};
use approxifer_kernels::{Code, CodeParams, Error, Layout, Matrix, NodeFamily, Tolerance};
use half::{bf16, f16};
use support::{random_masks, random_values};

fn code(k: usize, n: usize, s: usize) -> Code {
    Code::new(CodeParams::builder(k, n).stragglers(s).build().unwrap()).unwrap()
}

/// `[B, rows, len]` flat -> per group, per row, `f64`.
fn groups_of(values: &[f64], rows: usize, len: usize) -> Vec<Vec<Vec<f64>>> {
    values.chunks_exact(rows * len).map(|g| g.chunks_exact(len).map(<[f64]>::to_vec).collect()).collect()
}

fn reference_encode(code: &Code, queries: &[f64], len: usize) -> Vec<f64> {
    let e = reference::encode_matrix(&code.alpha(), &code.beta());
    groups_of(queries, code.params().queries(), len).iter().flat_map(|g| reference::apply(&e, g).concat()).collect()
}

fn reference_decode(code: &Code, outputs: &[f64], len: usize, masks: &[bool]) -> Vec<f64> {
    let n = code.params().workers();
    groups_of(outputs, n, len)
        .iter()
        .zip(masks.chunks_exact(n))
        .flat_map(|(g, mask)| {
            let responders: Vec<usize> = (0..n).filter(|&w| mask[w]).collect();
            let d = reference::decode_matrix(&code.alpha(), &code.beta(), &responders);
            let rows: Vec<Vec<f64>> = responders.iter().map(|&w| g[w].clone()).collect();
            reference::apply(&d, &rows).concat()
        })
        .collect()
}

/// Storage types with their conversions and the tolerance their precision earns.
trait Storage: Element + Default {
    const TOLERANCE: Tolerance;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl Storage for f64 {
    const TOLERANCE: Tolerance = Tolerance { relative: 1e-10, absolute: 1e-10 };
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
}
impl Storage for f32 {
    const TOLERANCE: Tolerance = Tolerance::BALANCED;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}
impl Storage for f16 {
    const TOLERANCE: Tolerance = Tolerance::PERMISSIVE;
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}
impl Storage for bf16 {
    // bf16 keeps 8 bits of mantissa: rounding the output alone costs 2^-9 relative.
    const TOLERANCE: Tolerance = Tolerance { relative: 2e-2, absolute: 2e-2 };
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

/// Encodes and decodes random data of storage `T`, checking both against the reference run
/// on the same (already rounded) inputs.
fn round_trip<T: Storage>(code: &Code, groups: usize, len: usize, seed: u64) {
    let (k, n, s) = (code.params().queries(), code.params().workers(), code.params().stragglers());
    let queries: Vec<T> = random_values(groups * k * len, seed).into_iter().map(T::from_f64).collect();
    let queries_f64: Vec<f64> = queries.iter().map(|v| v.to_f64()).collect();
    let coded = cpu::encode_to_vec(code, &queries, len).unwrap();
    let what = format!("{} {:?} B = {groups} D = {len}", T::DTYPE, code.params());
    T::TOLERANCE
        .check(coded.iter().map(|v| v.to_f64()), reference_encode(code, &queries_f64, len))
        .unwrap_or_else(|m| panic!("encode {what}: {m}"));

    // Decode arbitrary worker outputs (not a model's): the decoder is linear either way.
    let outputs: Vec<T> = random_values(groups * n * len, seed + 1).into_iter().map(T::from_f64).collect();
    let outputs_f64: Vec<f64> = outputs.iter().map(|v| v.to_f64()).collect();
    let masks = random_masks(groups, n, s, seed + 2);
    let decoded = cpu::decode_to_vec(code, &outputs, len, &masks).unwrap();
    T::TOLERANCE
        .check(decoded.iter().map(|v| v.to_f64()), reference_decode(code, &outputs_f64, len, &masks))
        .unwrap_or_else(|m| panic!("decode {what}: {m}"));
}

#[test]
fn encode_and_decode_match_reference_in_every_storage_type() {
    // D = 1, a width that is not a multiple of anything, one tile plus a bit, a width split
    // across threads (> 16 tiles), B = 1, and groups split across threads (past the size
    // below which a batch stays on the calling thread).
    for (k, n, s, groups, len) in [
        (2, 3, 1, 5, 1),
        (8, 10, 2, 7, 13),
        (5, 9, 2, 3, 1025),
        (8, 9, 1, 1, 40_000),
        (12, 13, 1, 64, 10),
        (4, 5, 1, 4096, 10),
    ] {
        let c = code(k, n, s);
        round_trip::<f64>(&c, groups, len, 1);
        round_trip::<f32>(&c, groups, len, 2);
        round_trip::<f16>(&c, groups, len, 3);
        round_trip::<bf16>(&c, groups, len, 4);
    }
}

#[test]
fn every_layout_and_family_matches_reference() {
    for layout in [Layout::NonSystematic, Layout::Systematic] {
        for family in NodeFamily::ALL {
            for (k, n) in [(3, 5), (8, 17), (4, 7), (1, 3)] {
                let params = CodeParams::builder(k, n).stragglers(n - k).nodes(family).layout(layout).build().unwrap();
                round_trip::<f64>(&Code::new(params).unwrap(), 9, 6, 5);
            }
        }
    }
}

#[test]
fn constants_survive_encode_and_decode() {
    let c = code(8, 10, 2);
    let queries = vec![0.75f32; 4 * 8 * 33];
    let coded = cpu::encode_to_vec(&c, &queries, 33).unwrap();
    Tolerance::BALANCED.check(coded.iter().map(|&v| f64::from(v)), std::iter::repeat_n(0.75, coded.len())).unwrap();
    let masks = random_masks(4, 10, 2, 9);
    let decoded = cpu::decode_to_vec(&c, &coded, 33, &masks).unwrap();
    Tolerance::BALANCED.check(decoded.iter().map(|&v| f64::from(v)), std::iter::repeat_n(0.75, decoded.len())).unwrap();
}

#[test]
fn systematic_queries_pass_through_exactly() {
    let params = CodeParams::builder(4, 6).stragglers(2).layout(Layout::Systematic).build().unwrap();
    let c = Code::new(params).unwrap();
    let queries: Vec<f32> = random_values(4 * 3, 11).into_iter().map(|v| v as f32).collect();
    let coded = cpu::encode_to_vec(&c, &queries, 3).unwrap();
    for (j, &w) in c.nodes().systematic_workers.as_ref().unwrap().iter().enumerate() {
        assert_eq!(coded[w * 3..w * 3 + 3], queries[j * 3..j * 3 + 3], "query {j} at worker {w}");
    }
    // With every systematic worker answering, decoding returns their outputs bit for bit.
    let mut mask = vec![false; 6];
    for &w in c.nodes().systematic_workers.as_ref().unwrap() {
        mask[w] = true;
    }
    let decoded = cpu::decode_to_vec(&c, &coded, 3, &mask).unwrap();
    assert_eq!(decoded, queries);
}

#[test]
fn rows_of_non_responders_are_never_read() {
    let c = code(3, 5, 2);
    let mut outputs: Vec<f32> = random_values(5 * 4, 12).into_iter().map(|v| v as f32).collect();
    let mask = [true, false, true, true, false];
    let clean = cpu::decode_to_vec(&c, &outputs, 4, &mask).unwrap();
    for w in [1, 4] {
        outputs[w * 4..w * 4 + 4].fill(f32::NAN);
    }
    let decoded = cpu::decode_to_vec(&c, &outputs, 4, &mask).unwrap();
    assert_eq!(decoded, clean);
}

#[test]
fn decode_error_shrinks_as_workers_grow() {
    // A smooth nonlinear "model" applied elementwise: f(x) = sin(3x). At fixed K the Berrut
    // interpolant converges as the worker grid refines, so the decode error must fall.
    let k = 6;
    let queries = random_values(200 * k * 4, 13).into_iter().map(|v| v / 4.0).collect::<Vec<f64>>();
    let truth: Vec<f64> = queries.iter().map(|x| (3.0 * x).sin()).collect();
    let mut errors = Vec::new();
    for n in [k + 1, k + 4, k + 16, k + 64] {
        let c = code(k, n, 1);
        let coded = cpu::encode_to_vec(&c, &queries, 4).unwrap();
        let outputs: Vec<f64> = coded.iter().map(|x| (3.0 * x).sin()).collect();
        let masks = random_masks(200, n, 1, 14);
        let decoded = cpu::decode_to_vec(&c, &outputs, 4, &masks).unwrap();
        let rms = (decoded.iter().zip(&truth).map(|(d, t)| (d - t).powi(2)).sum::<f64>() / truth.len() as f64).sqrt();
        errors.push((n, rms));
    }
    assert!(errors.windows(2).all(|w| w[1].1 < 0.8 * w[0].1), "errors do not shrink: {errors:?}");
    assert!(errors.last().unwrap().1 < 0.05, "{errors:?}");
}

// ---- error variants of the batch API -----------------------------------------------------------

#[test]
fn empty_rows() {
    let e = cpu::encode_to_vec::<f32>(&code(2, 3, 0), &[], 0).unwrap_err();
    assert_eq!(e, Error::EmptyRows { what: "queries" });
}

#[test]
fn not_whole_groups() {
    let e = cpu::encode_to_vec(&code(2, 3, 0), &[1.0f32; 7], 2).unwrap_err();
    assert_eq!(e, Error::NotWholeGroups { what: "queries", len: 7, rows_per_group: 2, row_len: 2 });
    let e = cpu::decode_to_vec(&code(2, 3, 0), &[1.0f32; 10], 2, &[true; 3]).unwrap_err();
    assert!(matches!(e, Error::NotWholeGroups { what: "worker outputs", .. }), "{e}");
}

#[test]
fn shape_mismatch_in_batches() {
    let c = code(2, 3, 0);
    let mut short = vec![0.0f32; 5];
    let e = cpu::encode(&c, &[1.0f32; 4], 2, &mut short).unwrap_err();
    assert_eq!(e, Error::ShapeMismatch { what: "coded queries", expected: 6, actual: 5 });
    let e = cpu::decode_to_vec(&c, &[1.0f32; 6], 2, &[true; 4]).unwrap_err();
    assert_eq!(e, Error::ShapeMismatch { what: "responder masks", expected: 3, actual: 4 });
}

#[test]
fn not_enough_responders_in_a_group_writes_nothing() {
    let c = code(2, 4, 1);
    let outputs = vec![1.0f32; 3 * 4];
    let masks = [
        true, true, true, true, /* group 1 */ true, false, true, true, /* group 2 */ false, true, false, true,
    ];
    let sentinel = -7.0f32;
    let mut decoded = vec![sentinel; 3 * 2];
    let e = cpu::decode(&c, &outputs, 1, &masks, &mut decoded).unwrap_err();
    assert_eq!(e, Error::NotEnoughResponders { group: Some(2), received: 2, workers: 4, stragglers: 1 });
    assert!(e.to_string().contains("in group 2"), "{e}");
    assert!(decoded.iter().all(|&v| v == sentinel), "a failed decode wrote {decoded:?}");
}

#[test]
fn non_finite_weight() {
    // Valid codes never produce one (codec.rs sweeps them all); the guard itself must fire.
    let m = Matrix::from_rows(2, 3, |r, row| row.fill(if r == 1 { f64::NAN } else { 0.5 }));
    let e = m.ensure_finite("decode").unwrap_err();
    assert!(matches!(e, Error::NonFiniteWeight { matrix: "decode", row: 1, col: 0, value } if value.is_nan()), "{e}");
    assert_eq!(e.to_string(), "decode weight [1, 0] is NaN, not finite");
    assert!(Matrix::from_rows(2, 2, |_, row| row.fill(f64::MAX)).ensure_finite("encode").is_ok());
}
