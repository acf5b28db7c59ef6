//! Berrut's rational interpolant, first form: the one place the coding weights are computed.
//!
//! For nodes `z_0 > z_1 > ... > z_{m-1}` and a point `x`,
//!
//! ```text
//! w_i(x) = ((-1)^i / (x - z_i)) / sum_l ((-1)^l / (x - z_l))
//! ```
//!
//! The sign alternates by *position in the sorted node list*. The interpolant has no real
//! poles, reproduces constants (the weights sum to one) and interpolates (`w(z_i) = e_i`).
//! The CPU kernels, the GPU kernels' host tables and the CLI all get their weights from here.

/// Writes the Berrut weights of a point into `weights`, given `x_minus_node[i] = x - z_i`
/// for the nodes in decreasing order (the caller forms the differences; see
/// [`Angle::cos_difference`](crate::nodes::Angle::cos_difference) for the accurate way).
///
/// A difference of exactly zero means `x` *is* that node: the weights are the unit vector
/// there (the limit of the formula), never `0/0`.
pub fn weights_into(x_minus_node: impl ExactSizeIterator<Item = f64>, weights: &mut [f64]) {
    debug_assert_eq!(x_minus_node.len(), weights.len());
    let mut total = 0.0;
    for (position, (diff, w)) in x_minus_node.zip(weights.iter_mut()).enumerate() {
        if diff == 0.0 {
            weights.fill(0.0);
            weights[position] = 1.0;
            return;
        }
        let sign = if position % 2 == 0 { 1.0 } else { -1.0 };
        *w = sign / diff;
        total += *w;
    }
    // Berrut (1988): the denominator sum_l (-1)^l / (x - z_l) has no real zero for distinct
    // nodes in order, so dividing by `total` is safe.
    for w in weights.iter_mut() {
        *w /= total;
    }
}

/// The Berrut weights of `x` over `nodes` (decreasing), computed from plain differences.
/// A convenience for callers that hold node values rather than angles.
pub fn weights(x: f64, nodes: &[f64]) -> Vec<f64> {
    let mut w = vec![0.0; nodes.len()];
    weights_into(nodes.iter().map(|z| x - z), &mut w);
    w
}
