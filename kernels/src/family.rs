//! The node families: where a code's worker nodes sit. Kept apart from the parameters so that
//! the error type can name a family without depending on the parameters that use it.

use std::fmt;

/// Where the worker nodes `beta_n` sit in `[-1, 1]`. Every family lists its nodes in
/// strictly decreasing order, so a worker's index is also its position in sorted node order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeFamily {
    /// Chebyshev points of the second kind, `cos(n pi / (N - 1))`: the paper's choice.
    #[default]
    Chebyshev2,
    /// Chebyshev points of the first kind, `cos((2n + 1) pi / (2N))`.
    Chebyshev1,
    /// `cos(n pi / N)`, as in the authors' public scripts.
    Authors,
}

impl NodeFamily {
    /// All families, for sweeps and tests.
    pub const ALL: [NodeFamily; 3] = [NodeFamily::Chebyshev2, NodeFamily::Chebyshev1, NodeFamily::Authors];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            NodeFamily::Chebyshev2 => "chebyshev2",
            NodeFamily::Chebyshev1 => "chebyshev1",
            NodeFamily::Authors => "authors",
        }
    }

    /// The fewest nodes the family is defined for.
    pub fn min_nodes(self) -> usize {
        match self {
            NodeFamily::Chebyshev2 => 2,
            NodeFamily::Chebyshev1 | NodeFamily::Authors => 1,
        }
    }
}

impl fmt::Display for NodeFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
