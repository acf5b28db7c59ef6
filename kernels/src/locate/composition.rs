//! Class probabilities are compositions (non-negative, summing to one): compared as they are,
//! the near one-hot answers to nearly pure coded queries make every blend look atypical, and
//! differences among tiny probabilities vanish. Both of our locators judge them on their
//! centred log-ratios (Aitchison's clr transform: the logits, up to a constant per row).

/// Whether `row` is a probability vector (values in `[0, 1]` summing to 1, to half-precision
/// rounding).
pub(super) fn is_composition(row: &[f64]) -> bool {
    row.iter().all(|v| (0.0..=1.0).contains(v)) && (row.iter().sum::<f64>() - 1.0).abs() <= 1e-2
}

/// Every row's `ln p - mean(ln p)`, probabilities floored at `1e-30` (an `f32` softmax keeps
/// far smaller ones; exact zeros come from underflow).
pub(super) fn centred_log_ratios(group: &[f64], row_len: usize) -> Vec<f64> {
    let mut out: Vec<f64> = group.iter().map(|p| p.max(1e-30).ln()).collect();
    for row in out.chunks_exact_mut(row_len) {
        let mean = row.iter().sum::<f64>() / row_len as f64;
        row.iter_mut().for_each(|v| *v -= mean);
    }
    out
}
