//! A dispatch's queries, and how each device forms its workers' inputs from them.
//!
//! The coordinator gathers queries into a [`Dispatch`]: raw queries in host memory, cut into
//! [`Segment`]s of whole groups that share a code (the full groups, then at most one partial
//! group coded for its own `K'`). For each device that hosts workers of the dispatch it makes
//! one [`Share`]; each worker gets a [`Work`], its slot in its device's share. The first worker
//! of a device to start forms the whole share: the raw queries go to the device once, the WGSL
//! encode forms exactly the coded queries of that device's workers ([`fused::encode_rows`]),
//! and each worker's input is a view of that tensor. Coded queries never exist in host memory
//! on a wgpu device; on Burn's CPU backend the CPU kernels form them, the host being the device.
//! A private code's masks are drawn on the host, once per segment, and go to each device with
//! the queries.

use std::sync::{Arc, OnceLock};

use burn::tensor::{Device, Tensor, TensorData};

use crate::fused::{self, FusedCode, FusedError};
use crate::kernels::{Code, Error as CodecError, cpu};

/// A code as the serving path uses it: the code, what decodes it once liars are removed, its
/// tables for the WGSL kernels, and which workers hold each query unmixed.
#[derive(Debug)]
pub struct Coding {
    pub code: Code,
    /// [`Code::erasure_code`]: the code itself when `A = 0`.
    pub erasure: Code,
    /// `None` when the tables do not fit a launch's uniform block: such codes are formed on the
    /// host and uploaded.
    pub fused: Option<FusedCode>,
    /// [`Code::direct_workers`].
    pub direct: Vec<Vec<usize>>,
}

impl Coding {
    pub fn new(code: Code) -> Result<Self, CodecError> {
        Ok(Coding {
            erasure: code.erasure_code()?,
            fused: FusedCode::new(code.clone()).ok(),
            direct: code.direct_workers(),
            code,
        })
    }

    /// `K`.
    pub fn queries(&self) -> usize {
        self.code.params().queries()
    }

    /// `N`.
    pub fn workers(&self) -> usize {
        self.code.params().workers()
    }
}

/// Whole groups of a dispatch coded with one code: queries `first_query ..
/// first_query + groups * K`.
#[derive(Clone, Debug)]
pub struct Segment {
    pub coding: Arc<Coding>,
    pub first_query: usize,
    pub groups: usize,
    /// A private code's masks, `[groups, T, D]`, drawn once per dispatch so that every device
    /// mixes the same ones (empty when `T = 0`).
    pub masks: Vec<f32>,
}

impl Segment {
    /// The coded queries of `nodes` for every group of this segment, `[groups, nodes, D]`,
    /// formed by the CPU kernels from the dispatch's `queries`.
    fn encode_on_host(&self, queries: &[f32], nodes: &[usize], d: usize) -> Result<Vec<f32>, CodecError> {
        let k = self.coding.queries();
        let host = &queries[self.first_query * d..(self.first_query + self.groups * k) * d];
        let mut coded = vec![0.0; self.groups * nodes.len() * d];
        cpu::encode_rows_masked(&self.coding.code, nodes, host, &self.masks, d, &mut coded)?;
        Ok(coded)
    }
}

/// The queries of one dispatch, `[Q, D]` in host memory as they arrived, and their coding
/// (no segments: the baselines' plain queries).
#[derive(Debug)]
pub struct Dispatch {
    queries: Vec<f32>,
    input_len: usize,
    segments: Vec<Segment>,
}

impl Dispatch {
    /// `queries` holds whole rows of `input_len`; the segments cover whole groups of them.
    /// Only the schemes make dispatches, so the parts they hand out always name a segment and
    /// a node that exist.
    pub(crate) fn new(queries: Vec<f32>, input_len: usize, segments: Vec<Segment>) -> Self {
        debug_assert!(input_len > 0 && queries.len() % input_len == 0);
        debug_assert!(
            segments.iter().all(|s| (s.first_query + s.groups * s.coding.queries()) * input_len <= queries.len()
                && s.masks.len() == s.groups * s.coding.code.params().privacy() * input_len)
        );
        Dispatch { queries, input_len, segments }
    }

    /// Queries in the dispatch.
    pub fn len(&self) -> usize {
        self.queries.len() / self.input_len
    }

    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Rows a worker computes for `parts` (`None`: every raw query).
    fn rows(&self, parts: Option<&[Part]>) -> usize {
        parts.map_or(self.len(), |parts| parts.iter().map(|p| self.segments[p.segment].groups).sum())
    }
}

/// One piece of a worker's input: coded query `node` of every group of segment `segment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub segment: usize,
    pub node: usize,
}

/// Why a device could not form its workers' inputs. Shared by the workers of the share.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FormError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Fused(Arc<FusedError>),
}

impl From<FusedError> for FormError {
    fn from(e: FusedError) -> Self {
        FormError::Fused(Arc::new(e))
    }
}

/// What one device computes of a dispatch: a slot per worker of that device, formed once.
struct Share {
    dispatch: Arc<Dispatch>,
    /// Per worker: its parts, in the order its answer's rows follow (`None`: the raw queries).
    slots: Vec<Option<Vec<Part>>>,
    formed: OnceLock<Result<Vec<Tensor<2>>, FormError>>,
}

/// One worker's input in a dispatch: its slot of its device's share.
#[derive(Clone)]
pub struct Work {
    share: Arc<Share>,
    slot: usize,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work").field("slot", &self.slot).field("parts", &self.share.slots[self.slot]).finish()
    }
}

impl Work {
    /// The works of the workers of one device: one per entry of `slots`, in order, formed
    /// together on first use.
    fn on_one_device(dispatch: Arc<Dispatch>, slots: Vec<Option<Vec<Part>>>) -> Vec<Work> {
        let count = slots.len();
        let share = Arc::new(Share { dispatch, slots, formed: OnceLock::new() });
        (0..count).map(|slot| Work { share: share.clone(), slot }).collect()
    }

    /// The works of the workers of a dispatch, one per entry of `slots`, the workers' devices
    /// given by `devices` (`None`: a worker outside this process): the workers of one device
    /// share one upload and one encode.
    pub(crate) fn by_device(
        dispatch: &Arc<Dispatch>,
        devices: &[Option<&Device>],
        slots: Vec<Option<Vec<Part>>>,
    ) -> Vec<Work> {
        debug_assert_eq!(devices.len(), slots.len());
        let mut slots: Vec<Option<Option<Vec<Part>>>> = slots.into_iter().map(Some).collect();
        let mut works: Vec<Option<Work>> = vec![None; slots.len()];
        for i in 0..slots.len() {
            if works[i].is_some() {
                continue;
            }
            let together: Vec<usize> = match devices[i] {
                Some(device) => {
                    (i..slots.len()).filter(|&j| works[j].is_none() && devices[j] == Some(device)).collect()
                }
                None => vec![i],
            };
            let shared = together.iter().map(|&j| slots[j].take().unwrap_or_default()).collect();
            for (j, work) in together.into_iter().zip(Work::on_one_device(dispatch.clone(), shared)) {
                works[j] = Some(work);
            }
        }
        works.into_iter().flatten().collect()
    }

    /// Rows of this worker's input, and of its answer.
    pub fn rows(&self) -> usize {
        self.share.dispatch.rows(self.share.slots[self.slot].as_deref())
    }

    /// This worker's input `[rows, D]` in host memory, row-major: for a worker outside this
    /// process, which gets its coded queries over the network. Formed by the CPU kernels.
    pub fn host_input(&self) -> Result<Vec<f32>, FormError> {
        let dispatch = &self.share.dispatch;
        let d = dispatch.input_len;
        let Some(parts) = &self.share.slots[self.slot] else {
            return Ok(dispatch.queries.clone());
        };
        let mut input = Vec::with_capacity(self.rows() * d);
        for part in parts {
            let segment = &dispatch.segments[part.segment];
            input.extend(segment.encode_on_host(&dispatch.queries, &[part.node], d)?);
        }
        Ok(input)
    }

    /// This worker's input `[rows, D]` on `device` (every worker of a share is on the same
    /// device): formed with the rest of the share on first use.
    pub fn input(&self, device: &Device) -> Result<Tensor<2>, FormError> {
        let formed = self.share.formed.get_or_init(|| form(&self.share.dispatch, &self.share.slots, device));
        match formed {
            Ok(inputs) => Ok(inputs[self.slot].clone()),
            Err(e) => Err(e.clone()),
        }
    }
}

/// Forms every slot's input on `device`: the raw queries uploaded once; per segment, the
/// coded queries of the nodes any slot needs, encoded once (on the device when it runs WGSL);
/// each slot a view of those rows.
fn form(dispatch: &Dispatch, slots: &[Option<Vec<Part>>], device: &Device) -> Result<Vec<Tensor<2>>, FormError> {
    let (q, d) = (dispatch.len(), dispatch.input_len);
    let on_device = fused::runs_wgsl(device);
    let needs_raw = on_device || slots.iter().any(Option::is_none);
    let raw = needs_raw.then(|| Tensor::<2>::from_data(TensorData::new(dispatch.queries.clone(), [q, d]), device));
    // Per segment: the nodes some slot needs (sorted) and their coded queries [G, M, D].
    let mut coded: Vec<Option<(Vec<usize>, Tensor<3>)>> = Vec::with_capacity(dispatch.segments.len());
    for (s, segment) in dispatch.segments.iter().enumerate() {
        let mut nodes: Vec<usize> =
            slots.iter().flatten().flatten().filter(|p| p.segment == s).map(|p| p.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.is_empty() {
            coded.push(None);
            continue;
        }
        let (k, groups) = (segment.coding.queries(), segment.groups);
        let rows = match (&raw, &segment.coding.fused) {
            (Some(raw), Some(fused)) if on_device => {
                let queries = raw.clone().narrow(0, segment.first_query, groups * k).reshape([groups, k, d]);
                let t = segment.coding.code.params().privacy();
                let masks = (t > 0)
                    .then(|| Tensor::<3>::from_data(TensorData::new(segment.masks.clone(), [groups, t, d]), device));
                fused::encode_rows(queries, masks, fused, &nodes)?
            }
            _ => {
                let values = segment.encode_on_host(&dispatch.queries, &nodes, d)?;
                Tensor::<3>::from_data(TensorData::new(values, [groups, nodes.len(), d]), device)
            }
        };
        coded.push(Some((nodes, rows)));
    }
    let inputs = slots
        .iter()
        .map(|slot| match slot {
            None => raw.clone().expect("the raw queries are uploaded when a slot takes them"),
            Some(parts) => {
                let pieces: Vec<Tensor<2>> = parts
                    .iter()
                    .map(|p| {
                        let (nodes, rows) = coded[p.segment].as_ref().expect("every part's segment is formed");
                        let m = nodes.binary_search(&p.node).expect("every part's node is formed");
                        let groups = dispatch.segments[p.segment].groups;
                        rows.clone().narrow(1, m, 1).reshape([groups, d])
                    })
                    .collect();
                if pieces.len() == 1 { pieces.into_iter().next().expect("one piece") } else { Tensor::cat(pieces, 0) }
            }
        })
        .collect();
    Ok(inputs)
}
