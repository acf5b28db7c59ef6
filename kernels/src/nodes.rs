//! Interpolation nodes as exact angles.
//!
//! Every node used by ApproxIFER is `cos(theta)` with `theta` a rational multiple of `pi`.
//! Keeping `theta / pi` as a reduced fraction gives two things floating point cannot:
//! coincident nodes (a data node equal to a worker node, e.g. K = 3, N = 5) compare equal
//! *exactly*, so Berrut weights become unit vectors instead of `0/0`; and differences of
//! nodes are formed from the angles, `cos a - cos b = -2 sin((a+b)/2) sin((a-b)/2)`, without
//! the cancellation of subtracting two nearby cosines.

use std::cmp::Ordering;
use std::f64::consts::PI;

use crate::params::{CodeParams, Layout, NodeFamily};

/// `theta = pi * num / den`, with `0 <= num <= den` and the fraction reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Angle {
    num: u64,
    den: u64,
}

impl Angle {
    /// `pi * num / den`, reduced. `den > 0` and `num <= den` (angles lie in `[0, pi]`).
    pub fn new(num: u64, den: u64) -> Self {
        debug_assert!(den > 0 && num <= den, "angle {num}/{den} of pi is outside [0, pi]");
        let g = gcd(num, den);
        Angle { num: num / g, den: den / g }
    }

    /// The angle in radians.
    pub fn radians(self) -> f64 {
        PI * self.num as f64 / self.den as f64
    }

    /// The node value `cos(theta)`. Equal angles give bit-identical values.
    pub fn cos(self) -> f64 {
        self.radians().cos()
    }

    /// `cos(self) - cos(other)`, exactly `0.0` iff the angles are equal, accurate to a few ulps
    /// of the result even for nearly equal angles.
    pub fn cos_difference(self, other: Angle) -> f64 {
        // Both fractions share the denominator den_a * den_b (< 2^26 for N <= MAX_WORKERS).
        let den = (self.den * other.den) as f64;
        let sum = (self.num * other.den + other.num * self.den) as f64;
        let diff = (self.num * other.den) as f64 - (other.num * self.den) as f64;
        -2.0 * (PI * sum / (2.0 * den)).sin() * (PI * diff / (2.0 * den)).sin()
    }
}

impl Ord for Angle {
    /// Angles in increasing order, which is node values in decreasing order.
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.num) * u128::from(other.den)).cmp(&(u128::from(other.num) * u128::from(self.den)))
    }
}

impl PartialOrd for Angle {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl NodeFamily {
    /// The angle of node `index` of `count` (`count >= self.min_nodes()`).
    pub fn angle(self, index: usize, count: usize) -> Angle {
        let (i, c) = (index as u64, count as u64);
        match self {
            NodeFamily::Chebyshev2 => Angle::new(i, c - 1),
            NodeFamily::Chebyshev1 => Angle::new(2 * i + 1, 2 * c),
            NodeFamily::Authors => Angle::new(i, c),
        }
    }

    /// All `count` angles of the family, increasing (node values decreasing).
    pub fn angles(self, count: usize) -> Vec<Angle> {
        (0..count).map(|i| self.angle(i, count)).collect()
    }
}

/// The node layout of one code: where each query and each worker sits.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTable {
    /// `theta` of the data nodes `alpha_j` of the queries, increasing.
    pub data: Vec<Angle>,
    /// `theta` of the data nodes of a private code's `T` masks, increasing (empty when
    /// `T = 0`). Queries and masks together are the first-kind points of `K + T`.
    pub masks: Vec<Angle>,
    /// `theta` of the worker nodes `beta_n`, increasing.
    pub workers: Vec<Angle>,
    /// For the systematic layout, the worker that holds query `j` unmixed.
    pub systematic_workers: Option<Vec<usize>>,
}

impl NodeTable {
    /// The nodes ALGORITHM.md prescribes for `params`.
    pub fn new(params: &CodeParams) -> Self {
        let (k, n) = (params.queries(), params.workers());
        let workers = params.nodes().angles(n);
        match params.layout() {
            Layout::NonSystematic => {
                let sources = NodeFamily::Chebyshev1.angles(params.sources());
                let mask_positions = params.masks().positions(k, params.privacy());
                let (mut data, mut masks) = (Vec::with_capacity(k), Vec::with_capacity(params.privacy()));
                for (position, angle) in sources.into_iter().enumerate() {
                    if mask_positions.contains(&position) { masks.push(angle) } else { data.push(angle) }
                }
                NodeTable { data, masks, workers, systematic_workers: None }
            }
            Layout::Systematic => {
                let chosen = systematic_positions(&workers, k);
                let data = chosen.iter().map(|&w| workers[w]).collect();
                NodeTable { data, masks: Vec::new(), workers, systematic_workers: Some(chosen) }
            }
        }
    }

    /// The data node values `alpha_j`.
    pub fn alpha(&self) -> Vec<f64> {
        self.data.iter().map(|a| a.cos()).collect()
    }

    /// The worker node values `beta_n`.
    pub fn beta(&self) -> Vec<f64> {
        self.workers.iter().map(|a| a.cos()).collect()
    }
}

/// Picks the `k` workers whose nodes serve as data nodes in the systematic layout.
///
/// ALGORITHM.md leaves the choice open. We keep the data nodes as close as the worker grid
/// allows to where the non-systematic layout puts them (first-kind points of `K`), which
/// spreads them over `[-1, 1]` with Chebyshev density: query `j` goes to the free worker
/// nearest to angle `(2j + 1) pi / 2K`, scanning in order so the choice stays monotone and
/// leaves enough workers for the queries after it.
fn systematic_positions(workers: &[Angle], k: usize) -> Vec<usize> {
    let n = workers.len();
    let mut chosen = Vec::with_capacity(k);
    let mut first_free = 0;
    for j in 0..k {
        let target = NodeFamily::Chebyshev1.angle(j, k).radians();
        let last_allowed = n - (k - j); // leave one worker for each later query
        let best = (first_free..=last_allowed)
            .min_by(|&a, &b| {
                let da = (workers[a].radians() - target).abs();
                let db = (workers[b].radians() - target).abs();
                da.total_cmp(&db)
            })
            .expect("first_free <= last_allowed because N >= K");
        chosen.push(best);
        first_free = best + 1;
    }
    chosen
}
