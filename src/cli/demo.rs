//! `approxifer demo`: the embedded model served with coded queries and stragglers, through the
//! fused pipeline on the best adapter (the default command); or, with `--synthetic`, a smooth
//! random network on the CPU reference path.

use std::io::Write;

use clap::Args;

use crate::demo::{TwoLayerNet, run_trial};
use crate::eval::{EvalConfig, Outputs, Setting};
use crate::kernels::gpu::AdapterChoice;
use crate::kernels::{CodeParams, Layout};

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// The smooth random network on the CPU path instead of the embedded model.
    #[arg(long)]
    synthetic: bool,
    /// Groups of K queries per setting (--synthetic only).
    #[arg(long, default_value_t = 2000)]
    groups: usize,
    /// Seed for the queries and the stragglers (and the synthetic network).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Adapter: auto (a GPU, else Burn's CPU backend), discrete, integrated, cpu (a CPU Vulkan
    /// driver such as lavapipe), or part of its name [env: APPROXIFER_ADAPTER]
    #[arg(long, value_name = "ADAPTER")]
    adapter: Option<AdapterChoice>,
    /// Print one JSON object per setting instead of a table.
    #[arg(long)]
    json: bool,
}

/// `(K, S)` for each row of the embedded demo, in both layouts.
const EMBEDDED_SETTINGS: [(usize, usize); 3] = [(8, 1), (8, 2), (12, 3)];

pub(super) fn run(args: &DemoArgs, out: &mut impl Write) -> anyhow::Result<()> {
    if args.synthetic {
        return run_synthetic(args, out);
    }
    let burn = super::model_device(args.adapter.as_ref())?;
    let device = burn.device.clone();
    eprintln!("{}", burn.notice());
    let model = crate::embedded::model(&device)?;
    let sample = crate::embedded::sample();
    let settings = [Layout::NonSystematic, Layout::Systematic]
        .into_iter()
        .flat_map(|layout| EMBEDDED_SETTINGS.map(|(k, stragglers)| Setting { k, stragglers, layout }))
        .collect();
    let config = EvalConfig {
        dataset: crate::embedded::DATASET,
        model: format!("{} (embedded)", crate::embedded::ARCHITECTURE.name()),
        settings,
        queries: sample.len(),
        batch_groups: 64,
        outputs: Outputs::Softmax,
        nodes: None,
        seed: args.seed,
    };
    let rows = super::eval::evaluate_with_progress(&model, &sample, &config, &device)?;
    if args.json {
        return super::write_json_lines(&rows, out);
    }
    writeln!(
        out,
        "approxifer demo: {} queries from the Fashion-MNIST test set, coded in groups of K for N = K + S workers \
         running the embedded {}; S random workers per group never answer.",
        sample.len(),
        crate::embedded::ARCHITECTURE.name()
    )?;
    super::eval::write_table(&rows, out)
}

/// `(K, S, extra workers beyond K + S)` for each row of the synthetic demo.
const SETTINGS: [(usize, usize, usize); 7] =
    [(4, 1, 0), (8, 1, 0), (8, 2, 0), (8, 1, 4), (8, 1, 12), (12, 1, 0), (12, 3, 0)];

fn run_synthetic(args: &DemoArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let net = TwoLayerNet::random(64, 128, 10, args.seed);
    if !args.json {
        writeln!(out, "approxifer demo --synthetic: a smooth random network, CPU reference path")?;
        writeln!(
            out,
            "model: fixed random 2-layer tanh network, D = {}, C = {}; {} groups per setting; S random stragglers per group",
            net.input(),
            net.classes(),
            args.groups
        )?;
        writeln!(out, "{:>4} {:>4} {:>4} {:>12} {:>16}", "K", "N", "S", "rel. error", "label agreement")?;
    }
    for (k, s, extra) in SETTINGS {
        let params = CodeParams::builder(k, k + s + extra).stragglers(s).build()?;
        let r = run_trial(&net, params, args.groups, args.seed)?;
        if args.json {
            serde_json::to_writer(&mut *out, &r)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{:>4} {:>4} {:>4} {:>12.4} {:>16.4}",
                r.k, r.n, r.stragglers, r.relative_error, r.label_agreement
            )?;
        }
    }
    if !args.json {
        writeln!(
            out,
            "label agreement: fraction of decoded argmax equal to the model's own answer on the uncoded query"
        )?;
    }
    Ok(())
}
