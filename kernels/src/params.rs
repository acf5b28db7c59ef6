//! Code parameters `(K, N, S, A)`, node family and layout, validated once.
//!
//! Everything downstream takes a [`CodeParams`], so an invalid combination cannot reach the
//! codec: it is rejected here, with the violated inequality in the error.

use std::fmt;

use crate::error::{Error, Result};
pub use crate::family::NodeFamily;

/// The most workers a code may have. Node tables are `K x N` and decode masks are per worker;
/// a prediction service with more workers than this per group is far outside what Berrut
/// coding is accurate for.
pub const MAX_WORKERS: usize = 4096;

/// How queries map to workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Data nodes are the `K` first-kind Chebyshev points; every worker gets a mixture (paper).
    #[default]
    NonSystematic,
    /// The data nodes are `K` of the worker nodes: those workers get raw queries (and give
    /// exact answers), the others get mixtures. Default worker nodes: first kind of `N`.
    Systematic,
}

impl Layout {
    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Layout::NonSystematic => "non-systematic",
            Layout::Systematic => "systematic",
        }
    }

    /// The worker node family used when none is asked for.
    pub fn default_nodes(self) -> NodeFamily {
        match self {
            Layout::NonSystematic => NodeFamily::Chebyshev2,
            Layout::Systematic => NodeFamily::Chebyshev1,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Validated parameters of one code. Build with [`CodeParams::builder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct CodeParams {
    queries: usize,
    workers: usize,
    stragglers: usize,
    byzantine: usize,
    nodes: NodeFamily,
    layout: Layout,
}

impl CodeParams {
    /// Starts a code of `queries` (K) per group spread over `workers` (N).
    pub fn builder(queries: usize, workers: usize) -> CodeParamsBuilder {
        CodeParamsBuilder { queries, workers, stragglers: 0, byzantine: 0, nodes: None, layout: Layout::default() }
    }

    /// The fewest workers a code of `queries` (K) needs to lose `stragglers` (S) and have
    /// `byzantine` (A) of the rest lie: `K + S`, or `2K + 2A + S - 1` when `A > 0`
    /// (saturating, so absurd inputs are reported rather than overflow).
    pub fn workers_needed(queries: usize, stragglers: usize, byzantine: usize) -> usize {
        if byzantine == 0 {
            return queries.saturating_add(stragglers);
        }
        queries.saturating_mul(2).saturating_add(byzantine.saturating_mul(2)).saturating_add(stragglers) - 1
    }

    /// `K`: queries per group.
    pub fn queries(&self) -> usize {
        self.queries
    }
    /// `N`: workers, one coded query each.
    pub fn workers(&self) -> usize {
        self.workers
    }
    /// `S`: stragglers tolerated; decoding needs `N - S` responders.
    pub fn stragglers(&self) -> usize {
        self.stragglers
    }
    /// `A`: Byzantine workers the locator is sized for.
    pub fn byzantine(&self) -> usize {
        self.byzantine
    }
    /// The worker node family.
    pub fn nodes(&self) -> NodeFamily {
        self.nodes
    }
    /// The layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// `N - S`: the fewest responders a group may be decoded from.
    pub fn min_responders(&self) -> usize {
        self.workers - self.stragglers
    }
}

/// Collects the optional parameters; [`build`](Self::build) validates them all at once.
#[derive(Clone, Copy, Debug)]
#[must_use = "call build() to validate the parameters"]
pub struct CodeParamsBuilder {
    queries: usize,
    workers: usize,
    stragglers: usize,
    byzantine: usize,
    nodes: Option<NodeFamily>,
    layout: Layout,
}

impl CodeParamsBuilder {
    /// `S`: how many workers may not answer (default 0).
    pub fn stragglers(mut self, stragglers: usize) -> Self {
        self.stragglers = stragglers;
        self
    }
    /// `A`: how many answers may be wrong (default 0).
    pub fn byzantine(mut self, byzantine: usize) -> Self {
        self.byzantine = byzantine;
        self
    }
    /// The worker node family (default: the layout's, see [`Layout::default_nodes`]).
    pub fn nodes(mut self, nodes: NodeFamily) -> Self {
        self.nodes = Some(nodes);
        self
    }
    /// The layout (default non-systematic).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Checks every constraint of ALGORITHM.md and returns the parameters, or the first
    /// violated inequality.
    pub fn build(self) -> Result<CodeParams> {
        let Self { queries, workers, stragglers, byzantine, nodes, layout } = self;
        let nodes = nodes.unwrap_or(layout.default_nodes());
        if queries == 0 {
            return Err(Error::NoQueries);
        }
        if workers > MAX_WORKERS {
            return Err(Error::TooManyWorkers { workers, max: MAX_WORKERS });
        }
        // Saturating sums: a huge S or A must be reported, not overflow.
        if workers < queries.saturating_add(stragglers) {
            return Err(Error::TooFewWorkers { workers, queries, stragglers });
        }
        if byzantine > 0 && workers < CodeParams::workers_needed(queries, stragglers, byzantine) {
            return Err(Error::TooFewWorkersForByzantine { workers, queries, byzantine, stragglers });
        }
        if workers < nodes.min_nodes() {
            return Err(Error::TooFewWorkersForNodes { family: nodes, workers, min: nodes.min_nodes() });
        }
        Ok(CodeParams { queries, workers, stragglers, byzantine, nodes, layout })
    }
}

impl std::str::FromStr for NodeFamily {
    type Err = String;

    /// Parses the names of [`NodeFamily::name`].
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        NodeFamily::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = NodeFamily::ALL.iter().map(|f| f.name()).collect();
            format!("unknown node family '{s}'; expected one of {}", names.join(", "))
        })
    }
}
