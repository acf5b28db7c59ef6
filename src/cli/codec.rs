//! `code`, `encode` and `decode`: the codec from the shell, on `.npy` files.

use std::io::Write;
use std::path::PathBuf;

use anyhow::ensure;
use clap::Args;
use serde::Serialize;

use super::CodeArgs;
use crate::backend::{Backend, Engine};
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::privacy::{DEFAULT_MASK_SIGMA, MaskSampler};
use crate::kernels::{Code, Layout, Locator, MaskPlacement, NodeFamily, cpu, locate};
use crate::map_data;
use crate::npy::{self, Array, Data};

#[derive(Debug, Args)]
pub(super) struct CodeCmd {
    #[command(flatten)]
    code: CodeArgs,
    /// Responding workers, comma-separated (e.g. 0,2,3): also print their decode matrix.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    responders: Option<Vec<usize>>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Where `encode` and `decode` run.
#[derive(Debug, Args)]
pub(super) struct EngineArgs {
    /// auto: the GPU kernels where an adapter exists, else the CPU path (float64 always runs
    /// on the CPU); cpu or gpu to insist.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Adapter: auto, discrete, integrated, cpu, or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<AdapterChoice>,
}

impl EngineArgs {
    /// The engine for `data`, with one notice line on stderr saying what runs where.
    fn engine(&self, data: &Data) -> anyhow::Result<Engine> {
        let adapter = self.adapter.clone().unwrap_or_else(AdapterChoice::from_env);
        let capable = match data {
            Data::F64(_) => Err("float64 data has no GPU kernels".to_string()),
            _ => Ok(()),
        };
        let engine = Engine::select(self.backend, &adapter, capable, &mut |line| eprintln!("{line}"))?;
        if let (Engine::Gpu(gpu), Data::F16(_)) = (&engine, data)
            && !gpu.context().supports_f16()
        {
            let adapter = gpu.context().adapter_name();
            ensure!(self.backend == Backend::Auto, "--backend gpu: adapter {adapter} has no f16 shader support");
            eprintln!("approxifer: adapter {adapter} has no f16 shader support; using the CPU path");
            return Ok(Engine::Cpu);
        }
        Ok(engine)
    }
}

#[derive(Debug, Args)]
pub(super) struct EncodeCmd {
    #[command(flatten)]
    code: CodeArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Queries, float16/32/64 .npy of shape [B*K, ...] in C order.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Where to write the coded queries, shape [B*N, ...], same dtype.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// With --privacy T: the masks, .npy of shape [B*T, ...] with the queries' row shape and
    /// dtype [default: drawn N(0, sigma^2) from ChaCha20, fresh for every group]
    #[arg(long, value_name = "FILE", conflicts_with_all = ["mask_sigma", "seed"])]
    masks: Option<PathBuf>,
    /// With --privacy T: the drawn masks' standard deviation, in the queries' units
    /// [default: 8, chosen by measurement: README, "Private queries"]
    #[arg(long, value_name = "SIGMA")]
    mask_sigma: Option<f64>,
    /// With --privacy T: draw the masks from this seed, the same every run (for tests and
    /// evaluations; a service must not) [default: the operating system's entropy]
    #[arg(long)]
    seed: Option<u64>,
}

impl EncodeCmd {
    /// The masks of `groups` groups of `code` (`[groups, T, row_len]`) in the dtype of
    /// `queries`: read from --masks or drawn; empty when the code has no privacy.
    fn masks(&self, code: &Code, queries: &Data, groups: usize, row_len: usize) -> anyhow::Result<Data> {
        let t = code.params().privacy();
        if t == 0 {
            ensure!(
                self.masks.is_none() && self.mask_sigma.is_none() && self.seed.is_none(),
                "--masks, --mask-sigma and --seed are for private codes: add --privacy T"
            );
            return Ok(map_data!(queries, _v => Vec::new()));
        }
        if let Some(path) = &self.masks {
            let masks = npy::read(path)?;
            ensure!(
                masks.shape[1..].iter().product::<usize>() == row_len,
                "{}: mask rows have shape {:?}, the queries' rows have {row_len} elements",
                path.display(),
                &masks.shape[1..]
            );
            ensure!(
                masks.shape[0] == groups * t && masks.data.len() == groups * t * row_len,
                "{}: {groups} groups with T = {t} need {} mask rows of {row_len}, the file has shape {:?}",
                path.display(),
                groups * t,
                masks.shape
            );
            ensure!(
                masks.data.dtype() == queries.dtype(),
                "{}: masks are {}, the queries {}; give them the same dtype",
                path.display(),
                masks.data.dtype(),
                queries.dtype()
            );
            return Ok(masks.data);
        }
        let sigma = self.mask_sigma.unwrap_or(DEFAULT_MASK_SIGMA);
        let mut sampler = match self.seed {
            Some(seed) => MaskSampler::seeded(sigma, seed)?,
            None => MaskSampler::from_entropy(sigma)?,
        };
        let drawn = sampler.masks(code, groups, row_len);
        Ok(match queries {
            Data::F16(_) => Data::F16(drawn.iter().map(|&m| half::f16::from_f32(m)).collect()),
            Data::F32(_) => Data::F32(drawn),
            Data::F64(_) => Data::F64(drawn.iter().map(|&m| f64::from(m)).collect()),
        })
    }
}

#[derive(Debug, Args)]
pub(super) struct DecodeCmd {
    #[command(flatten)]
    code: CodeArgs,
    #[command(flatten)]
    engine: EngineArgs,
    /// Worker outputs, .npy of shape [B*N, ...]; rows of non-responders are never read.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Responding workers, comma-separated, the same for every group (at least N - S).
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true)]
    responders: Vec<usize>,
    /// Where to write the decoded predictions, shape [B*K, ...], same dtype.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// With --byzantine A > 0, how liars are found: robust (ours; fits classifiers) or paper
    /// (the authors' rational Berlekamp-Welch; better on smooth models such as regressions).
    /// Located workers are listed as JSON on stdout. Best of all: --calibration.
    #[arg(long, value_name = "LOCATOR", default_value_t = Locator::Robust, conflicts_with = "calibration")]
    locator: Locator,
    /// With --byzantine, locate with the calibrated locator learnt for this code and model
    /// (what `approxifer calibrate` writes) instead of --locator.
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
}

/// What `decode --byzantine A` prints: per group, the workers it decoded without.
#[derive(Debug, Serialize)]
struct DecodeReport {
    locator: &'static str,
    byzantine: usize,
    /// Per group, the removed workers (answers with NaN or infinity, and suspects).
    located: Vec<Vec<usize>>,
}

/// What `code --json` prints.
#[derive(Debug, Serialize)]
struct CodeReport {
    k: usize,
    n: usize,
    stragglers: usize,
    byzantine: usize,
    nodes: NodeFamily,
    layout: Layout,
    /// Colluding workers the masks hide the queries from (T).
    privacy: usize,
    /// Private codes: where the masks' data nodes sit among the K + T.
    #[serde(skip_serializing_if = "Option::is_none")]
    mask_placement: Option<MaskPlacement>,
    /// Private codes: the masks' data node values, decreasing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mask_nodes: Vec<f64>,
    /// Systematic layout: the worker that receives query j unmixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    systematic_workers: Option<Vec<usize>>,
    alpha: Vec<f64>,
    beta: Vec<f64>,
    encode: Vec<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    responders: Option<Vec<usize>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decode: Option<Vec<Vec<f64>>>,
}

pub(super) fn code(args: &CodeCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let code = args.code.build()?;
    let p = code.params();
    let (responders, decode) = match &args.responders {
        Some(list) => {
            let responders = code.responders(list)?;
            let matrix = code.decode_matrix(&responders)?;
            (Some(responders.as_slice().to_vec()), Some(matrix.to_nested()))
        }
        None => (None, None),
    };
    let report = CodeReport {
        k: p.queries(),
        n: p.workers(),
        stragglers: p.stragglers(),
        byzantine: p.byzantine(),
        nodes: p.nodes(),
        layout: p.layout(),
        privacy: p.privacy(),
        mask_placement: (p.privacy() > 0).then_some(p.masks()),
        mask_nodes: code.nodes().masks.iter().map(|a| a.cos()).collect(),
        systematic_workers: code.nodes().systematic_workers.clone(),
        alpha: code.alpha(),
        beta: code.beta(),
        encode: code.encode_matrix().to_nested(),
        responders,
        decode,
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        print_report(&report, out)?;
    }
    Ok(())
}

fn print_report(r: &CodeReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "K = {}, N = {}, S = {}, A = {}, {} nodes, {} layout",
        r.k, r.n, r.stragglers, r.byzantine, r.nodes, r.layout
    )?;
    if let Some(workers) = &r.systematic_workers {
        writeln!(out, "systematic workers (query j -> worker): {workers:?}")?;
    }
    writeln!(out, "alpha (data nodes):   {}", row_text(&r.alpha))?;
    if let Some(placement) = r.mask_placement {
        writeln!(out, "T = {} masks ({placement}) at {}", r.privacy, row_text(&r.mask_nodes))?;
    }
    writeln!(out, "beta (worker nodes):  {}", row_text(&r.beta))?;
    if r.privacy > 0 {
        writeln!(out, "encode (N x (K + T)), row n = weights of the queries, then the masks, in coded query n:")?;
    } else {
        writeln!(out, "encode (N x K), row n = weights of the queries in coded query n:")?;
    }
    for row in &r.encode {
        writeln!(out, "  {}", row_text(row))?;
    }
    if let (Some(responders), Some(decode)) = (&r.responders, &r.decode) {
        writeln!(out, "decode (K x |F|) from responders {responders:?}, row j = weights for query j:")?;
        for row in decode {
            writeln!(out, "  {}", row_text(row))?;
        }
    }
    Ok(())
}

fn row_text(row: &[f64]) -> String {
    row.iter().map(|v| format!("{v:>10.6}")).collect::<Vec<_>>().join(" ")
}

pub(super) fn encode(args: &EncodeCmd) -> anyhow::Result<()> {
    let code = args.code.build()?;
    let (k, n) = (code.params().queries(), code.params().workers());
    let input = npy::read(&args.input)?;
    let (groups, row_len) = split_groups(&input, k, &args.input, "queries")?;
    let masks = args.masks(&code, &input.data, groups, row_len)?;
    let output = npy::OutputFile::create(&args.output)?;
    let engine = args.engine.engine(&input.data)?;
    let coded = match (engine, input.data, masks) {
        (Engine::Gpu(gpu), Data::F32(v), Data::F32(m)) => Data::F32(gpu.encode_masked(&code, &v, &m, row_len)?),
        (Engine::Gpu(gpu), Data::F16(v), Data::F16(m)) => Data::F16(gpu.encode_masked(&code, &v, &m, row_len)?),
        (_, Data::F16(v), Data::F16(m)) => Data::F16(cpu::encode_masked_to_vec(&code, &v, &m, row_len)?),
        (_, Data::F32(v), Data::F32(m)) => Data::F32(cpu::encode_masked_to_vec(&code, &v, &m, row_len)?),
        (_, Data::F64(v), Data::F64(m)) => Data::F64(cpu::encode_masked_to_vec(&code, &v, &m, row_len)?),
        _ => anyhow::bail!("the masks' dtype differs from the queries'"),
    };
    output.write(&regroup_shape(&input.shape, groups * n), &coded)?;
    Ok(())
}

pub(super) fn decode(args: &DecodeCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let code = args.code.build()?;
    let (k, n, byzantine) = (code.params().queries(), code.params().workers(), code.params().byzantine());
    let responders = code.responders(&args.responders)?;
    let input = npy::read(&args.input)?;
    let (groups, row_len) = split_groups(&input, n, &args.input, "worker outputs")?;
    let output = npy::OutputFile::create(&args.output)?;
    let mut masks = responders.to_mask().repeat(groups);
    // Byzantine codes: find the liars on the host, then decode the rest as stragglers.
    let locator = match &args.calibration {
        Some(path) => Locator::Calibrated(crate::calibration_file::read(path)?.for_code(&code)),
        None => args.locator.clone(),
    };
    let mut data = input.data;
    let (code, located) = if byzantine > 0 {
        let location = match &data {
            Data::F16(v) => locate(&code, &locator, v, row_len, &masks)?,
            Data::F32(v) => locate(&code, &locator, v, row_len, &masks)?,
            Data::F64(v) => locate(&code, &locator, v, row_len, &masks)?,
        };
        masks = location.masks;
        // With a learnt predictor the removed rows are filled in and every node decodes.
        let filled = match &data {
            Data::F16(v) => locator.imputed(&code, v, row_len, &masks)?.map(Data::F16),
            Data::F32(v) => locator.imputed(&code, v, row_len, &masks)?.map(Data::F32),
            Data::F64(v) => locator.imputed(&code, v, row_len, &masks)?.map(Data::F64),
        };
        match filled {
            Some(filled) => {
                data = filled;
                masks.fill(true);
                (code, Some(location.located))
            }
            None => (code.erasure_code()?, Some(location.located)),
        }
    } else {
        (code, None)
    };
    let engine = args.engine.engine(&data)?;
    let decoded = match (engine, data) {
        (Engine::Gpu(gpu), Data::F32(v)) => Data::F32(gpu.decode(&code, &v, row_len, &masks)?),
        (Engine::Gpu(gpu), Data::F16(v)) => Data::F16(gpu.decode(&code, &v, row_len, &masks)?),
        (_, data) => map_data!(data, v => cpu::decode_to_vec(&code, &v, row_len, &masks)?),
    };
    output.write(&regroup_shape(&input.shape, groups * k), &decoded)?;
    if let Some(located) = located {
        serde_json::to_writer(&mut *out, &DecodeReport { locator: locator.name(), byzantine, located })?;
        writeln!(out)?;
    }
    Ok(())
}

/// Splits an array's first dimension into groups of `rows_per_group` rows; returns the
/// number of groups and the length of one row (the product of the other dimensions).
fn split_groups(
    array: &Array,
    rows_per_group: usize,
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<(usize, usize)> {
    let rows = array.shape[0];
    ensure!(
        rows % rows_per_group == 0,
        "{}: {what} have {rows} rows (shape {:?}), not a multiple of {rows_per_group}",
        path.display(),
        array.shape
    );
    let row_len: usize = array.shape[1..].iter().product();
    ensure!(row_len > 0, "{}: {what} rows are empty (shape {:?})", path.display(), array.shape);
    Ok((rows / rows_per_group, row_len))
}

/// `shape` with its first dimension replaced by `rows`.
fn regroup_shape(shape: &[usize], rows: usize) -> Vec<usize> {
    std::iter::once(rows).chain(shape[1..].iter().copied()).collect()
}
