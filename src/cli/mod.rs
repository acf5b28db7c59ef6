//! The `approxifer` command line.
//!
//! Every failure ends as one line on stderr (`error: ...`) and a non-zero exit status;
//! nothing here panics on user input.

mod bench;
mod calibrate;
mod codec;
mod demo;
mod eval;
mod export;
mod model;
mod output;
mod parity;
mod serve;
mod serve_bench;
mod train;
mod worker;
mod workers;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::kernels::gpu::{ADAPTER_ENV, AdapterChoice};
use crate::kernels::{Code, CodeParams, Layout, MaskPlacement, NodeFamily};

/// Resilient, model-agnostic prediction serving with Berrut-coded queries (ApproxIFER).
///
/// Without a subcommand, serves the embedded model through every scheme under injected
/// stragglers for a few seconds and prints their latency, throughput and accuracy.
#[derive(Debug, Parser)]
#[command(name = "approxifer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The accuracy of coded inference on the embedded model with stragglers (fused on the
    /// best adapter), or with --synthetic of a smooth model on the CPU.
    Demo(demo::DemoArgs),
    /// Print a code's nodes, its encode matrix and, given responders, its decode matrix.
    Code(codec::CodeCmd),
    /// Encode queries from a .npy file of shape [B*K, ...] into coded queries [B*N, ...].
    Encode(codec::EncodeCmd),
    /// Decode worker outputs [B*N, C] from the responders into predictions [B*K, C].
    Decode(codec::DecodeCmd),
    /// Train a zoo model on MNIST or Fashion-MNIST and save its weights.
    Train(train::TrainArgs),
    /// Train a ParM parity model for a hosted model and K (the baseline eval and serving
    /// compare with).
    TrainParity(parity::TrainParityArgs),
    /// Learn the calibrated Byzantine locator for a hosted model and code from honest answers
    /// to coded training queries (for decode --calibration, eval and serve).
    Calibrate(calibrate::CalibrateArgs),
    /// Accuracy of coded inference over a grid of K, S and layouts (the paper's protocol and
    /// ParM's), as a table, JSON or a plot.
    Eval(eval::EvalArgs),
    /// Uncoded, replication, hedged requests and ApproxIFER on the same workload with injected
    /// stragglers: latency percentiles, throughput, worker budget and accuracy.
    ServeBench(serve_bench::ServeBenchArgs),
    /// Serve a model over the Open Inference Protocol (KServe v2 REST) through the coded
    /// runtime (or a baseline), on local or remote workers; /metrics (Prometheus); Ctrl-C
    /// drains and stops.
    Serve(serve::ServeArgs),
    /// One model replica behind the Open Inference Protocol with dynamic batching: a remote
    /// worker for `serve --worker URL`.
    Worker(worker::WorkerCmd),
    /// Write a model's parameters as .npy arrays (and a manifest), for other engines.
    ExportWeights(export::ExportArgs),
    /// Measure throughput: `bench kernels` (copy, encode, decode, CPU and Burn, one device),
    /// `bench pipeline` (fused encode + model + decode against a host round trip).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

/// The options that define a code, shared by `code`, `encode` and `decode`.
#[derive(Debug, Args)]
struct CodeArgs {
    /// Queries per group.
    #[arg(long = "k", value_name = "K")]
    queries: usize,
    /// Workers per group (one coded query each).
    #[arg(long = "n", value_name = "N")]
    workers: usize,
    /// Workers that may not answer; decoding needs N - S responders.
    #[arg(long, value_name = "S", default_value_t = 0)]
    stragglers: usize,
    /// Workers that may answer wrongly (needs N >= 2K + 2A + S - 1).
    #[arg(long, value_name = "A", default_value_t = 0)]
    byzantine: usize,
    /// Worker nodes: chebyshev2 (default), chebyshev1 (default with --systematic) or authors.
    #[arg(long, value_name = "FAMILY")]
    nodes: Option<NodeFamily>,
    /// Send K of the N workers the raw queries (systematic layout).
    #[arg(long)]
    systematic: bool,
    /// Colluding workers the queries are hidden from (T): T random masks are mixed into every
    /// group over K + T data nodes (needs N >= K + T + S, or more with --byzantine).
    #[arg(long, value_name = "T", default_value_t = 0)]
    privacy: usize,
    /// Where the T masks' data nodes sit among the K + T: tail (the authors') or interleaved.
    #[arg(long, value_name = "PLACEMENT", default_value_t = MaskPlacement::Tail)]
    mask_placement: MaskPlacement,
}

impl CodeArgs {
    fn build(&self) -> anyhow::Result<Code> {
        let layout = if self.systematic { Layout::Systematic } else { Layout::NonSystematic };
        let mut builder = CodeParams::builder(self.queries, self.workers)
            .stragglers(self.stragglers)
            .byzantine(self.byzantine)
            .privacy(self.privacy)
            .masks(self.mask_placement)
            .layout(layout);
        if let Some(nodes) = self.nodes {
            builder = builder.nodes(nodes);
        }
        Ok(Code::new(builder.build()?)?)
    }
}

/// Where a command runs its model: the adapter `--adapter` (else `APPROXIFER_ADAPTER`) asks
/// for, or with none asked for the best GPU, else Burn's CPU backend
/// ([`BurnDevice::select_or_flex`](crate::backend::BurnDevice::select_or_flex)).
fn model_device(adapter: Option<&AdapterChoice>) -> anyhow::Result<crate::backend::BurnDevice> {
    let choice = adapter.cloned().unwrap_or_else(AdapterChoice::from_env);
    crate::backend::BurnDevice::select_or_flex(&choice).with_context(|| match adapter {
        Some(_) => format!("--adapter {choice} (without it the model runs on the CPU)"),
        None => format!("{ADAPTER_ENV}={choice} (without it the model runs on the CPU)"),
    })
}

/// Parses the arguments, runs the command and turns any failure into one line on stderr.
pub fn main() -> ExitCode {
    quiet_vulkan_loader();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version: print as clap formats them.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first paragraph (what is wrong, and which arguments), without
            // the usage and tips that follow.
            let rendered = e.render().to_string();
            let first: Vec<&str> = rendered.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
            let line = if first.is_empty() { "error: invalid arguments".into() } else { first.join(" ") };
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`approxifer code ... | head`) is the reader's choice, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Without `XDG_RUNTIME_DIR`, the Vulkan loader's windowing layers print an error line on
/// every start. The tool never opens a window: give them a private directory instead.
fn quiet_vulkan_loader() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some() {
        return;
    }
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "default".into());
    let dir = std::env::temp_dir().join(format!("approxifer-runtime-{user}"));
    if std::fs::create_dir_all(&dir).is_ok() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", &dir) };
    }
}

/// Where the serving coordinator decodes its batches (`serve`, `serve-bench`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
enum CodecArg {
    /// The CPU kernels (a group is a few kilobytes: faster than a device round trip).
    #[default]
    Cpu,
    /// The WGSL kernels on the adapter `choice` selects, named on stderr.
    Gpu,
}

impl CodecArg {
    fn build(self, choice: &crate::kernels::gpu::AdapterChoice) -> anyhow::Result<crate::serve::Codec> {
        use crate::backend::{Backend, Engine};
        let backend = match self {
            CodecArg::Cpu => Backend::Cpu,
            CodecArg::Gpu => Backend::Gpu,
        };
        let mut notice = |line: String| eprintln!("{line} (the coordinator's encode and decode)");
        Ok(match Engine::select(backend, choice, Ok(()), &mut notice)? {
            Engine::Gpu(gpu) => crate::serve::Codec::Gpu(std::sync::Arc::from(gpu)),
            Engine::Cpu => crate::serve::Codec::Cpu,
        })
    }
}

/// A duration given in milliseconds on the command line (`what` names the option), at most
/// [`MAX_MS`]: deadlines and timers are added to the clock, which a far larger one overflows.
fn ms(v: f64, what: &str) -> anyhow::Result<std::time::Duration> {
    anyhow::ensure!(v.is_finite() && v >= 0.0, "{what} must be a non-negative number of ms");
    anyhow::ensure!(v <= MAX_MS, "{what} is too large: {v:e} ms (at most {MAX_MS:e})");
    Ok(std::time::Duration::from_secs_f64(v / 1e3))
}

/// The longest duration an option takes, in ms (about 11.6 days).
const MAX_MS: f64 = 1e9;

/// One JSON object per line, the `--json` output of the report commands.
fn write_json_lines<T: serde::Serialize>(rows: &[T], out: &mut impl Write) -> anyhow::Result<()> {
    for row in rows {
        serde_json::to_writer(&mut *out, row)?;
        writeln!(out)?;
    }
    Ok(())
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress_bar(total: u64, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let template = format!("{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} (eta {{eta}})");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let io = cause.downcast_ref::<std::io::Error>();
        let json = cause.downcast_ref::<serde_json::Error>().and_then(|j| j.io_error_kind());
        io.map(|io| io.kind()).or(json) == Some(std::io::ErrorKind::BrokenPipe)
    })
}

impl Cli {
    fn run(self) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        let command = match self.command {
            Some(command) => command,
            None => {
                writeln!(
                    stdout,
                    "approxifer: the embedded model served by each scheme, one random worker 10x slower on 5% of \
                     batches (`approxifer serve-bench --help` for more; `approxifer demo` for the accuracy table)"
                )?;
                Command::ServeBench(serve_bench::quick())
            }
        };
        match command {
            Command::Demo(args) => demo::run(&args, &mut stdout)?,
            Command::Code(args) => codec::code(&args, &mut stdout)?,
            Command::Encode(args) => codec::encode(&args)?,
            Command::Decode(args) => codec::decode(&args, &mut stdout)?,
            Command::Train(args) => train::run(&args, &mut stdout)?,
            Command::TrainParity(args) => parity::run(&args, &mut stdout)?,
            Command::Calibrate(args) => calibrate::run(&args, &mut stdout)?,
            Command::Eval(args) => eval::run(&args, &mut stdout)?,
            Command::ServeBench(args) => serve_bench::run_cmd(&args, &mut stdout)?,
            Command::Serve(args) => serve::run_cmd(&args)?,
            Command::Worker(args) => worker::run_cmd(&args)?,
            Command::ExportWeights(args) => export::run(&args, &mut stdout)?,
            Command::Bench(cmd) => bench::run(&cmd, &mut stdout)?,
        }
        stdout.flush()?;
        Ok(())
    }
}
