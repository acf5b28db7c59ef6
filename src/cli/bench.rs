//! `approxifer bench ...`.

use std::io::Write;

use clap::{Args, Subcommand};

use crate::bench::{KernelBenchConfig, PipelineBenchConfig, run_kernel_bench, run_pipeline_bench};
use crate::kernels::gpu::AdapterChoice;
use crate::models::Architecture;

#[derive(Debug, Subcommand)]
pub(super) enum BenchCmd {
    /// Copy, encode and decode throughput on one adapter, next to the CPU path and Burn's
    /// matmul, in GB/s of bytes read plus written.
    Kernels(KernelsArgs),
    /// Fused encode + decode time next to the model's forward pass on the same device, and the
    /// fused pipeline next to one that reads the coded queries back to the host.
    Pipeline(PipelineArgs),
}

#[derive(Debug, Args)]
pub(super) struct PipelineArgs {
    /// Adapter: auto, discrete, integrated, cpu, or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<AdapterChoice>,
    /// The hosted model (randomly initialised: only its cost matters here).
    #[arg(long, value_enum, default_value_t = Architecture::Lenet5)]
    model: Architecture,
    /// Groups of K queries per batch.
    #[arg(long, default_value_t = 256)]
    groups: usize,
    #[arg(long = "k", default_value_t = 8)]
    k: usize,
    #[arg(long, default_value_t = 1)]
    stragglers: usize,
    /// Timed repeats per figure (the median is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(super) struct KernelsArgs {
    /// Adapter: auto, discrete, integrated, cpu, or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<AdapterChoice>,
    /// Size of the encode input in MiB.
    #[arg(long, value_name = "SIZE", default_value_t = 50)]
    mib: usize,
    /// Queries per group.
    #[arg(long = "k", default_value_t = 8)]
    queries: usize,
    /// Workers per group.
    #[arg(long = "n", default_value_t = 10)]
    workers: usize,
    /// Timed repeats per figure (the median is reported).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Skip Burn's matmul.
    #[arg(long)]
    no_burn: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(cmd: &BenchCmd, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Kernels(args) => kernels(args, out),
        BenchCmd::Pipeline(args) => pipeline(args, out),
    }
}

fn pipeline(args: &PipelineArgs, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.groups > 0 && args.k > 0, "--groups and --k must be at least 1");
    let config = PipelineBenchConfig {
        architecture: args.model,
        groups: args.groups,
        k: args.k,
        stragglers: args.stragglers,
        repeats: args.repeats,
    };
    let r = run_pipeline_bench(&args.adapter.clone().unwrap_or_else(AdapterChoice::from_env), &config)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "adapter: {}  ({}, {} groups, K = {}, N = {}; ms per batch, medians)",
        r.adapter, r.model, r.groups, r.k, r.n
    )?;
    writeln!(out, "  encode (fused)            {:>9.3} ms", r.encode_ms)?;
    writeln!(out, "  forward on N coded/group  {:>9.3} ms", r.forward_ms)?;
    writeln!(out, "  decode (fused)            {:>9.3} ms", r.decode_ms)?;
    writeln!(out, "  encode + decode           {:>9.2} % of the forward pass", r.overhead_percent)?;
    writeln!(out, "  fused pipeline, total     {:>9.3} ms", r.fused_total_ms)?;
    writeln!(
        out,
        "  host round trip, total    {:>9.3} ms   (CPU encode, upload, forward, read-back, CPU decode)",
        r.host_round_trip_total_ms
    )?;
    Ok(())
}

fn kernels(args: &KernelsArgs, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.mib > 0, "--mib must be at least 1");
    let config = KernelBenchConfig {
        input_mib: args.mib,
        queries: args.queries,
        workers: args.workers,
        repeats: args.repeats,
        burn: !args.no_burn,
        ..KernelBenchConfig::default()
    };
    let adapter = args.adapter.clone().unwrap_or_else(AdapterChoice::from_env);
    let r = run_kernel_bench(&adapter, &config)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(());
    }
    let burn = |v: Option<f64>| v.map_or("skipped".to_string(), |v| format!("{v:.2}"));
    writeln!(
        out,
        "adapter: {}  (K = {}, N = {}, {} MiB of queries; GB/s = bytes read + written)",
        r.adapter, r.k, r.n, r.input_mib
    )?;
    writeln!(out, "  copy_buffer_to_buffer     {:>9.2} GB/s", r.copy_gbps)?;
    writeln!(out, "  WGSL copy kernel          {:>9.2} GB/s", r.copy_kernel_gbps)?;
    writeln!(
        out,
        "  encode (WGSL)             {:>9.2} GB/s   {:.2} x the copy kernel",
        r.encode_gbps, r.encode_vs_copy_kernel
    )?;
    writeln!(
        out,
        "  encode (Burn matmul)      {:>9} GB/s   encode is {} x faster",
        burn(r.burn_matmul_encode_gbps),
        burn(r.encode_vs_burn_matmul)
    )?;
    writeln!(out, "  encode (CPU reference)    {:>9.2} GB/s", r.cpu_encode_gbps)?;
    writeln!(
        out,
        "  decode (WGSL)             {:>9.2} GB/s   {} groups of {} outputs in {:.2} ms (encoding their 784-float inputs: {:.2} ms)",
        r.decode_gbps, r.decode_groups, r.decode_classes, r.decode_ms, r.encode_inputs_ms
    )?;
    Ok(())
}
