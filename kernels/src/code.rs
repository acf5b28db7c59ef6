//! A prepared code: nodes, the encode matrix, and decode weights for any responder set.

use crate::berrut;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::nodes::{Angle, NodeTable};
use crate::params::{CodeParams, CodeParamsBuilder, MAX_WORKERS};

/// One Berrut code, prepared from validated [`CodeParams`]: build it once, then encode and
/// decode any number of groups with it.
#[derive(Clone, Debug)]
pub struct Code {
    params: CodeParams,
    nodes: NodeTable,
    /// `alpha_j - beta_n`, `K x N` row-major, from the exact angles: an exact `0.0` marks a
    /// data node that coincides with a worker node. Both the encode matrix and every decode
    /// matrix are built from this one table (the GPU decode kernel receives it too).
    data_minus_worker: Vec<f64>,
    encode: Matrix,
}

impl Code {
    /// Prepares the code: node angles, the difference table and the `N x (K + T)` encode
    /// matrix.
    pub fn new(params: CodeParams) -> Result<Self> {
        let nodes = NodeTable::new(&params);
        let (k, n) = (params.queries(), params.workers());
        let mut data_minus_worker = Vec::with_capacity(k * n);
        for alpha in &nodes.data {
            data_minus_worker.extend(nodes.workers.iter().map(|&beta| alpha.cos_difference(beta)));
        }
        if params.privacy() > 0 {
            if let Some(at) = data_minus_worker.iter().position(|&d| d == 0.0) {
                return Err(Error::UnmaskedWorker { worker: at % n, query: at / n });
            }
        }
        // The encoder's inputs are the K queries then the T masks; Berrut's signs alternate in
        // node order, so the weights are formed over the merged, sorted nodes and then placed
        // in their input columns.
        let mut sources: Vec<(Angle, usize)> = nodes.data.iter().copied().zip(0..k).collect();
        sources.extend(nodes.masks.iter().copied().zip(k..));
        sources.sort_by_key(|&(angle, _)| angle);
        let mut sorted = vec![0.0; sources.len()];
        let encode = Matrix::from_rows(n, sources.len(), |worker, row| {
            let beta = nodes.workers[worker];
            berrut::weights_into(sources.iter().map(|&(alpha, _)| -alpha.cos_difference(beta)), &mut sorted);
            for (&(_, column), &w) in sources.iter().zip(&sorted) {
                row[column] = w;
            }
        });
        encode.ensure_finite("encode")?;
        Ok(Code { params, nodes, data_minus_worker, encode })
    }

    /// The code of `params`, or of the same parameters with the fewest more workers for which
    /// no worker node coincides with a query's node: with `T > 0`, such a worker would receive
    /// its query unmasked ([`Error::UnmaskedWorker`]), which some `(K, T, N)` triples and node
    /// families give. Every other error is returned as it is. What a service that derives `N`
    /// from `K`, `T`, `S` and `A` uses.
    pub fn with_masked_workers(params: CodeParamsBuilder) -> Result<Self> {
        let first = params.build()?;
        let mut last = Error::NoQueries;
        for workers in first.workers()..=first.workers().saturating_add(first.sources()).min(MAX_WORKERS) {
            match Code::new(params.workers(workers).build()?) {
                Err(e @ Error::UnmaskedWorker { .. }) => last = e,
                other => return other,
            }
        }
        Err(last)
    }

    /// The code of a group of `k` queries (fewer than this code's `K`) served alongside this
    /// one: the same `S`, `A`, `T`, masks, nodes and layout on the fewest workers `k` needs (at
    /// least as many as the node family is defined for, and for `T > 0` a worker more where
    /// one would receive its query unmasked). What `serve` codes a batch's partial group with,
    /// and what `approxifer calibrate --partial` calibrates. An error where that takes more
    /// workers than this code has (never for the codes `serve` builds).
    pub fn for_queries(&self, k: usize) -> Result<Code> {
        let p = &self.params;
        let n = CodeParams::workers_needed(k + p.privacy(), p.stragglers(), p.byzantine()).max(p.nodes().min_nodes());
        let params = CodeParams::builder(k, n)
            .stragglers(p.stragglers())
            .byzantine(p.byzantine())
            .privacy(p.privacy())
            .masks(p.masks())
            .nodes(p.nodes())
            .layout(p.layout());
        let code = Code::with_masked_workers(params)?;
        if code.params().workers() > p.workers() {
            return Err(Error::TooFewWorkersForPrivacy {
                workers: p.workers(),
                needed: code.params().workers(),
                queries: k,
                privacy: p.privacy(),
                stragglers: p.stragglers(),
                byzantine: p.byzantine(),
            });
        }
        Ok(code)
    }

    /// The code that decodes a Byzantine code's groups once the liars are removed: the same
    /// nodes (hence the same weights for any responder set), `A = 0`, and `S + A` stragglers,
    /// since located workers are dropped like stragglers. The code itself when `A = 0`.
    pub fn erasure_code(&self) -> Result<Code> {
        let p = &self.params;
        if p.byzantine() == 0 {
            return Ok(self.clone());
        }
        let params = CodeParams::builder(p.queries(), p.workers())
            .stragglers(p.stragglers() + p.byzantine())
            .privacy(p.privacy())
            .masks(p.masks())
            .nodes(p.nodes())
            .layout(p.layout())
            .build()?;
        Code::new(params)
    }

    /// The parameters this code was built from.
    pub fn params(&self) -> &CodeParams {
        &self.params
    }

    /// The node angles.
    pub fn nodes(&self) -> &NodeTable {
        &self.nodes
    }

    /// The data node values `alpha_j`, decreasing.
    pub fn alpha(&self) -> Vec<f64> {
        self.nodes.alpha()
    }

    /// The worker node values `beta_n`, decreasing.
    pub fn beta(&self) -> Vec<f64> {
        self.nodes.beta()
    }

    /// The `N x (K + T)` encode matrix `E`: coded query `n` is `sum_j E[n, j] X_j` over the
    /// `K` queries then the `T` masks of the group.
    pub fn encode_matrix(&self) -> &Matrix {
        &self.encode
    }

    /// The rows of the encode matrix for `workers` (in that order): the weights that form only
    /// those workers' coded queries, as a device hosting some of a group's workers needs.
    pub fn encode_rows(&self, workers: &[usize]) -> Result<Matrix> {
        let n = self.params.workers();
        if let Some(&worker) = workers.iter().find(|&&w| w >= n) {
            return Err(Error::WorkerOutOfRange { worker, workers: n });
        }
        Ok(Matrix::from_rows(workers.len(), self.encode.cols(), |r, row| {
            row.copy_from_slice(self.encode.row(workers[r]))
        }))
    }

    /// `alpha_j - beta_n` as a `K x N` row-major table (exact zeros at coincident nodes).
    pub fn data_minus_worker(&self) -> &[f64] {
        &self.data_minus_worker
    }

    /// Validates a list of responding workers (any order) against this code.
    pub fn responders(&self, workers: &[usize]) -> Result<Responders> {
        let n = self.params.workers();
        if workers.len() > n {
            return Err(Error::TooManyResponders { received: workers.len(), workers: n });
        }
        if let Some(&worker) = workers.iter().find(|&&w| w >= n) {
            return Err(Error::ResponderOutOfRange { worker, workers: n });
        }
        let mut sorted = workers.to_vec();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Error::DuplicateResponder { worker: pair[0] });
        }
        self.check_enough(sorted.len(), None)?;
        Ok(Responders { workers: sorted, total: n })
    }

    /// Validates a responder mask (`mask[n]` is true when worker `n` answered).
    pub fn responders_from_mask(&self, mask: &[bool]) -> Result<Responders> {
        self.check_mask_len(mask.len())?;
        let workers: Vec<usize> = mask.iter().enumerate().filter(|(_, answered)| **answered).map(|(n, _)| n).collect();
        self.check_enough(workers.len(), None)?;
        Ok(Responders { workers, total: mask.len() })
    }

    /// The `K x |F|` decode matrix `D_F`: `f(X_j) ~= sum_i D_F[j, i] Y~_{F_i}`.
    pub fn decode_matrix(&self, responders: &Responders) -> Result<Matrix> {
        let m = Matrix::from_rows(self.params.queries(), responders.len(), |j, row| {
            self.decode_row_into(j, responders.as_slice(), row)
        });
        m.ensure_finite("decode")?;
        Ok(m)
    }

    /// Row `j` of the decode matrix for `responders` (sorted, validated). Signs alternate by
    /// position in the responder list, which is sorted node order since every node family
    /// is decreasing in the worker index.
    pub(crate) fn decode_row_into(&self, query: usize, responders: &[usize], row: &mut [f64]) {
        let table = &self.data_minus_worker[query * self.params.workers()..][..self.params.workers()];
        berrut::weights_into(responders.iter().map(|&i| table[i]), row);
    }

    pub(crate) fn check_mask_len(&self, len: usize) -> Result<()> {
        let n = self.params.workers();
        if len != n {
            return Err(Error::ShapeMismatch { what: "responder mask", expected: n, actual: len });
        }
        Ok(())
    }

    /// For each query `j`, the workers whose coded query *is* query `j` (a unit row of the
    /// encode matrix): its systematic worker, or a worker whose node coincides with `alpha_j`.
    /// When one of them answers, query `j`'s prediction is exact rather than reconstructed.
    pub fn direct_workers(&self) -> Vec<Vec<usize>> {
        let (k, n, sources) = (self.params.queries(), self.params.workers(), self.encode.cols());
        let e = self.encode.as_slice();
        (0..k)
            .map(|j| {
                (0..n).filter(|&w| (0..sources).all(|i| e[w * sources + i] == f64::from(u8::from(i == j)))).collect()
            })
            .collect()
    }

    /// Checks `masks`, `groups x N` flags (true where the worker answered), as every decoder
    /// does: whole groups, each with at least `N - S` responders. Returns the group count.
    pub fn check_masks(&self, masks: &[bool]) -> Result<usize> {
        let n = self.params.workers();
        crate::shape::whole_groups("responder masks", masks.len(), 1, n)?;
        for (group, mask) in masks.chunks_exact(n).enumerate() {
            self.check_enough(mask.iter().filter(|&&answered| answered).count(), Some(group))?;
        }
        Ok(masks.len() / n)
    }

    pub(crate) fn check_enough(&self, received: usize, group: Option<usize>) -> Result<()> {
        let p = &self.params;
        if received < p.min_responders() {
            return Err(Error::NotEnoughResponders {
                group,
                received,
                workers: p.workers(),
                stragglers: p.stragglers(),
            });
        }
        Ok(())
    }
}

/// A validated set of responding workers, sorted by index (= sorted node order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Responders {
    workers: Vec<usize>,
    /// `N`, the number of workers of the code.
    total: usize,
}

impl Responders {
    /// The responding workers, increasing.
    pub fn as_slice(&self) -> &[usize] {
        &self.workers
    }
    /// How many responded.
    pub fn len(&self) -> usize {
        self.workers.len()
    }
    /// Never true for a validated set, which holds at least `N - S >= K >= 1` workers.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }
    /// The set as a mask over all `N` workers.
    pub fn to_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.total];
        for &w in &self.workers {
            mask[w] = true;
        }
        mask
    }
}
