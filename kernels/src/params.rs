//! Code parameters `(K, N, S, A, T)`, node family and layouts, validated once.
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

/// Where a private code's `T` mask nodes sit among its `K + T` data nodes (first-kind
/// Chebyshev points of `K + T`). Berrut weights concentrate on the data nodes nearest a
/// worker's node, so this decides how much mask each worker's coded query carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskPlacement {
    /// The last `T` data nodes, after the `K` query nodes (the authors' code): queries and
    /// masks occupy the two ends of `[-1, 1]`.
    #[default]
    Tail,
    /// Spread evenly among the query nodes (mask `t` at position `(t + 1)(K + T) / (T + 1)`),
    /// so more workers sit next to a mask.
    Interleaved,
}

impl MaskPlacement {
    /// Every placement, for sweeps.
    pub const ALL: [MaskPlacement; 2] = [MaskPlacement::Tail, MaskPlacement::Interleaved];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            MaskPlacement::Tail => "tail",
            MaskPlacement::Interleaved => "interleaved",
        }
    }

    /// The positions (in node order) of the `privacy` mask nodes among `queries + privacy`
    /// data nodes, increasing.
    pub fn positions(self, queries: usize, privacy: usize) -> Vec<usize> {
        let total = queries + privacy;
        match self {
            MaskPlacement::Tail => (queries..total).collect(),
            MaskPlacement::Interleaved => (0..privacy).map(|t| (t + 1) * total / (privacy + 1)).collect(),
        }
    }
}

impl fmt::Display for MaskPlacement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MaskPlacement {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        MaskPlacement::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown mask placement '{s}'; expected tail or interleaved"))
    }
}

/// Validated parameters of one code. Build with [`CodeParams::builder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct CodeParams {
    queries: usize,
    workers: usize,
    stragglers: usize,
    byzantine: usize,
    privacy: usize,
    masks: MaskPlacement,
    nodes: NodeFamily,
    layout: Layout,
}

impl CodeParams {
    /// Starts a code of `queries` (K) per group spread over `workers` (N).
    pub fn builder(queries: usize, workers: usize) -> CodeParamsBuilder {
        CodeParamsBuilder {
            queries,
            workers,
            stragglers: 0,
            byzantine: 0,
            privacy: 0,
            masks: MaskPlacement::default(),
            nodes: None,
            layout: Layout::default(),
        }
    }

    /// The fewest workers a code of `queries` (K) needs to lose `stragglers` (S) and have
    /// `byzantine` (A) of the rest lie: `K + S`, or `2K + 2A + S - 1` when `A > 0`
    /// (saturating, so absurd inputs are reported rather than overflow). A private code
    /// interpolates `K + T` data nodes: pass `K + T` as `queries`.
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
    /// `T`: random masks mixed into every group, so that `T` colluding workers see the
    /// queries under noise (0: no masks).
    pub fn privacy(&self) -> usize {
        self.privacy
    }
    /// Where the mask nodes sit (meaningful when `T > 0`).
    pub fn masks(&self) -> MaskPlacement {
        self.masks
    }
    /// `K + T`: the rows the encoder mixes per group (queries, then masks).
    pub fn sources(&self) -> usize {
        self.queries + self.privacy
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
    privacy: usize,
    masks: MaskPlacement,
    nodes: Option<NodeFamily>,
    layout: Layout,
}

impl CodeParamsBuilder {
    /// `N`: replaces the worker count given to [`CodeParams::builder`].
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }
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
    /// `T`: how many colluding workers the queries are masked against (default 0). Needs
    /// the non-systematic layout and `N >= K + T + S`.
    pub fn privacy(mut self, privacy: usize) -> Self {
        self.privacy = privacy;
        self
    }
    /// Where the mask nodes sit (default [`MaskPlacement::Tail`], the authors' choice).
    pub fn masks(mut self, masks: MaskPlacement) -> Self {
        self.masks = masks;
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
        let Self { queries, workers, stragglers, byzantine, privacy, masks, nodes, layout } = self;
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
        if privacy > 0 {
            if layout == Layout::Systematic {
                return Err(Error::PrivacyNeedsMixing { privacy });
            }
            let needed = CodeParams::workers_needed(queries.saturating_add(privacy), stragglers, byzantine);
            if workers < needed {
                return Err(Error::TooFewWorkersForPrivacy {
                    workers,
                    needed,
                    queries,
                    privacy,
                    stragglers,
                    byzantine,
                });
            }
        }
        if byzantine > 0 && workers < CodeParams::workers_needed(queries, stragglers, byzantine) {
            return Err(Error::TooFewWorkersForByzantine { workers, queries, byzantine, stragglers });
        }
        if workers < nodes.min_nodes() {
            return Err(Error::TooFewWorkersForNodes { family: nodes, workers, min: nodes.min_nodes() });
        }
        Ok(CodeParams { queries, workers, stragglers, byzantine, privacy, masks, nodes, layout })
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
