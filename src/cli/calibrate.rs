//! `approxifer calibrate`: learns the calibrated Byzantine locator for a hosted model and code
//! from honest answers to coded training queries (src/eval/calibrate.rs).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::data::{self, Dataset, Split};
use crate::eval::calibrate::calibrate_from_answers;
use crate::eval::{CalibrateConfig, Outputs, calibrate, default_nodes};
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::locate::calibrated::DEFAULT_FALSE_ALARM;
use crate::kernels::{Calibration, Code, CodeParams, Layout, NodeFamily};
use crate::models::Architecture;
use crate::npy::{self, Data};

/// Honest groups learnt from when `--groups` is not given (of a zoo model's traffic).
const DEFAULT_GROUPS: usize = 1000;

#[derive(Debug, Args)]
pub(super) struct CalibrateArgs {
    /// Learn from honest answers computed elsewhere instead of running a zoo model: a
    /// float16/32/64 .npy of shape [G*N, ...], every worker's answer to the coded queries
    /// `approxifer encode` made of G groups of training queries, with the same code flags
    /// (its nodes then default to encode's and decode's, chebyshev2). Any model, any engine.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dataset", "model", "weights", "outputs", "partial", "batch_groups", "data", "adapter"])]
    answers: Option<PathBuf>,
    /// The dataset whose training images make the honest traffic (from scripts/fetch-data.sh).
    #[arg(long, value_enum, default_value_t = Dataset::Mnist)]
    dataset: Dataset,
    /// The hosted model's architecture [default: the dataset's: digit-cnn for MNIST, lenet5
    /// for Fashion-MNIST]
    #[arg(long, value_enum)]
    model: Option<Architecture>,
    /// Its weights [default: the digit CNN from the data directory, or the embedded model]
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Queries per group.
    #[arg(long = "k", value_name = "K")]
    queries: usize,
    /// Workers that may answer wrongly.
    #[arg(long, value_name = "A", default_value_t = 1)]
    byzantine: usize,
    /// Workers that may not answer (the calibration traffic misses as many, at random).
    #[arg(long, value_name = "S", default_value_t = 0)]
    stragglers: usize,
    /// Workers per group [default: the least, 2K + 2A + S - 1]
    #[arg(long = "n", value_name = "N")]
    workers: Option<usize>,
    /// Worker nodes [default: authors, as `eval --byzantine`; with --answers, chebyshev2, as
    /// `encode` and `decode`]
    #[arg(long, value_name = "FAMILY")]
    nodes: Option<NodeFamily>,
    /// What the workers return: logits or softmax (class probabilities).
    #[arg(long, value_enum, default_value_t = Outputs::Logits)]
    outputs: Outputs,
    /// Honest groups to learn from [default: 1000; with --answers, every group of the file]
    #[arg(long, value_name = "G")]
    groups: Option<usize>,
    /// The probability that an honest answer is flagged.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_FALSE_ALARM)]
    false_alarm: f64,
    /// Also calibrate the codes `serve` forms for a batch's partial groups (K' = 1 to K - 1
    /// queries left when the queue delay fires), each from as many groups, into the same
    /// file: `serve --calibration FILE` then starts every code calibrated, where a partial
    /// code otherwise starts from the robust locator.
    #[arg(long)]
    partial: bool,
    /// Where the calibration goes (JSON).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// Groups per device batch.
    #[arg(long, default_value_t = 64)]
    batch_groups: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The data directory [default: $APPROXIFER_DATA, else ./data]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Adapter: auto (a GPU, else Burn's CPU backend), discrete, integrated, cpu (a CPU Vulkan
    /// driver such as lavapipe), or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<AdapterChoice>,
}

pub(super) fn run(args: &CalibrateArgs, out: &mut impl Write) -> anyhow::Result<()> {
    anyhow::ensure!(args.groups != Some(0), "--groups must be at least 1");
    let (k, s, a) = (args.queries, args.stragglers, args.byzantine);
    let n = args.workers.unwrap_or(CodeParams::workers_needed(k, s, a));
    let mut params = CodeParams::builder(k, n).stragglers(s).byzantine(a);
    match (args.nodes, &args.answers) {
        (Some(nodes), _) => params = params.nodes(nodes),
        (None, None) => params = params.nodes(default_nodes(Layout::NonSystematic)),
        (None, Some(_)) => {} // the codec's own default, as `encode` made the queries with
    }
    let code = Code::new(params.build()?)?;
    let nodes = code.params().nodes();
    let staged = super::output::Staged::new(&args.output)?;
    if let Some(path) = &args.answers {
        let calibration = from_answers(args, &code, path)?;
        crate::calibration_file::write(staged.path(), std::slice::from_ref(&calibration))?;
        staged.persist()?;
        let (row_len, groups) = (calibration.row_len, calibration.groups);
        return Ok(writeln!(
            out,
            "calibration of the answers in {} for K = {k}, N = {n}, S = {s}, {nodes} nodes, {row_len} outputs, from {groups} honest groups: {}",
            path.display(),
            args.output.display()
        )?);
    }
    let groups = args.groups.unwrap_or(DEFAULT_GROUPS);
    let dir = args.data.clone().unwrap_or_else(data::default_dir);
    let burn = super::model_device(args.adapter.as_ref())?;
    let (architecture, model) =
        super::model::hosted_for(args.dataset, args.model, args.weights.as_deref(), &dir, &burn.device)?;
    let images = data::load(&dir, args.dataset, Split::Train)?;
    eprintln!("{}", burn.notice());
    let config = CalibrateConfig {
        dataset: args.dataset,
        groups,
        outputs: args.outputs,
        false_alarm: args.false_alarm,
        batch_groups: args.batch_groups,
        seed: args.seed,
    };
    // The configured code first, then the partial groups' from the largest.
    let mut codes = vec![code.clone()];
    if args.partial {
        codes.extend((1..k).rev().map(|k| code.for_queries(k)).collect::<Result<Vec<_>, _>>()?);
    }
    let bar = super::progress_bar((groups * codes.len()) as u64, "groups");
    let mut calibrations = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let progress = |done: usize, _| bar.set_position((i * groups + done) as u64);
        calibrations.push(calibrate(&model, &images, code, &config, &burn.device, progress)?);
    }
    bar.finish_and_clear();
    crate::calibration_file::write(staged.path(), &calibrations)?;
    staged.persist()?;
    let (row_len, groups) = (calibrations[0].row_len, calibrations[0].groups);
    writeln!(
        out,
        "calibration of {} on {} for K = {k}, N = {n}, S = {s}, {nodes} nodes, {row_len} outputs, from {groups} honest groups: {}",
        architecture.name(),
        args.dataset.name(),
        args.output.display()
    )?;
    for calibration in &calibrations[1..] {
        let (k, n) = (calibration.queries, calibration.workers);
        writeln!(out, "  and for partial groups of K' = {k} (N' = {n}), from {} honest groups", calibration.groups)?;
    }
    Ok(())
}

/// `--answers`: the calibration of `code` from the file's honest answers (its first
/// `--groups` groups, or all).
fn from_answers(args: &CalibrateArgs, code: &Code, path: &Path) -> anyhow::Result<Calibration> {
    let n = code.params().workers();
    let answers = npy::read(path)?;
    let rows = answers.shape[0];
    let row_len: usize = answers.shape[1..].iter().product();
    anyhow::ensure!(
        row_len > 0 && rows % n == 0,
        "{}: answers of shape {:?} are not whole groups of N = {n} rows (one per worker, as `encode` wrote the coded queries)",
        path.display(),
        answers.shape
    );
    let available = rows / n;
    let groups = args.groups.unwrap_or(available);
    anyhow::ensure!(
        groups <= available,
        "{}: --groups {groups}, but the file holds {available} groups of N = {n}",
        path.display()
    );
    let end = groups * n * row_len;
    let (false_alarm, seed) = (args.false_alarm, args.seed);
    Ok(match &answers.data {
        Data::F16(v) => calibrate_from_answers(code, &v[..end], row_len, false_alarm, seed),
        Data::F32(v) => calibrate_from_answers(code, &v[..end], row_len, false_alarm, seed),
        Data::F64(v) => calibrate_from_answers(code, &v[..end], row_len, false_alarm, seed),
    }?)
}
