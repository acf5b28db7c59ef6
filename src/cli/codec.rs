//! `code`, `encode` and `decode`: the codec from the shell, on `.npy` files.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::ensure;
use clap::Args;
use serde::Serialize;

use super::CodeArgs;
use crate::backend::{Backend, Engine};
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::{Layout, Locator, NodeFamily, cpu, locate};
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
    /// With --byzantine A > 0, how liars are found: robust (ours) or paper (the authors'
    /// rational Berlekamp-Welch). Located workers are listed as JSON on stdout.
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
    writeln!(out, "beta (worker nodes):  {}", row_text(&r.beta))?;
    writeln!(out, "encode (N x K), row n = weights of the queries in coded query n:")?;
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
    let output = npy::OutputFile::create(&args.output)?;
    let engine = args.engine.engine(&input.data)?;
    let coded = match (engine, input.data) {
        (Engine::Gpu(gpu), Data::F32(v)) => Data::F32(gpu.encode(&code, &v, row_len)?),
        (Engine::Gpu(gpu), Data::F16(v)) => Data::F16(gpu.encode(&code, &v, row_len)?),
        (_, data) => map_data!(data, v => cpu::encode_to_vec(&code, &v, row_len)?),
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
        Some(path) => Locator::Calibrated(Arc::new(crate::eval::calibrate::read(path)?)),
        None => args.locator.clone(),
    };
    let (code, located) = if byzantine > 0 {
        let location = match &input.data {
            Data::F16(v) => locate(&code, &locator, v, row_len, &masks)?,
            Data::F32(v) => locate(&code, &locator, v, row_len, &masks)?,
            Data::F64(v) => locate(&code, &locator, v, row_len, &masks)?,
        };
        masks = location.masks;
        (code.erasure_code()?, Some(location.located))
    } else {
        (code, None)
    };
    let engine = args.engine.engine(&input.data)?;
    let decoded = match (engine, input.data) {
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
