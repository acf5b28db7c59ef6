//! `approxifer demo`: coded inference of a smooth model with stragglers, on the CPU.

use std::io::Write;

use clap::Args;

use crate::demo::{TwoLayerNet, run_trial};
use crate::kernels::CodeParams;

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// Groups of K queries per setting.
    #[arg(long, default_value_t = 2000)]
    groups: usize,
    /// Seed for the network, the queries and the stragglers.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print one JSON object per setting instead of a table.
    #[arg(long)]
    json: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs { groups: 2000, seed: 7, json: false }
    }
}

/// `(K, S, extra workers beyond K + S)` for each row of the demo table.
const SETTINGS: [(usize, usize, usize); 7] =
    [(4, 1, 0), (8, 1, 0), (8, 2, 0), (8, 1, 4), (8, 1, 12), (12, 1, 0), (12, 3, 0)];

pub(super) fn run(args: &DemoArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let net = TwoLayerNet::random(64, 128, 10, args.seed);
    if !args.json {
        writeln!(out, "approxifer demo: CPU reference path (the GPU pipeline is not built yet)")?;
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
