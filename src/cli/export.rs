//! `approxifer export-weights`: a model's parameters as plain `.npy` arrays, so that another
//! engine (a Triton Python backend, numpy, PyTorch) can run the same model.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use burn::store::ModuleSnapshot;
use clap::Args;

use super::model::ModelArgs;
use crate::npy::{self, Data};

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The folder the arrays go to (created if missing): one `NAME.npy` (float32) per
    /// parameter, named by its path in the model (`conv1.weight`), and `manifest.json`.
    #[arg(long, short, value_name = "DIR")]
    output: PathBuf,
}

/// What `manifest.json` says about the arrays beside it.
#[derive(serde::Serialize)]
struct Manifest {
    architecture: String,
    /// One query's shape, without the batch dimension.
    input_shape: Vec<usize>,
    /// Logits per query (the served model answers their softmax).
    output_len: usize,
    /// Burn's layouts: convolution weights `[out, in, kh, kw]` as PyTorch's, but linear
    /// weights `[in, out]` (a layer is `x @ weight + bias`), the transpose of PyTorch's.
    layout: &'static str,
    tensors: Vec<ManifestTensor>,
}

#[derive(serde::Serialize)]
struct ManifestTensor {
    name: String,
    shape: Vec<usize>,
}

pub(super) fn run(args: &ExportArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let model = args.model.load(&burn::tensor::Device::flex())?;
    std::fs::create_dir_all(&args.output).with_context(|| format!("{}", args.output.display()))?;
    let mut tensors = Vec::new();
    // Paths without the zoo enum's variant: `conv1.weight`, not `Lenet5.conv1.weight`.
    for tensor in model.collect(None, None, true) {
        let data = burn::store::bridge::to_data(&tensor).map_err(|e| anyhow::anyhow!("{}: {e}", tensor.name))?;
        let shape = data.shape().to_vec();
        let values =
            data.convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{}: {e:?}", tensor.name))?;
        npy::write(&args.output.join(format!("{}.npy", tensor.name)), &shape, &Data::F32(values))?;
        tensors.push(ManifestTensor { name: tensor.name.clone(), shape });
    }
    let manifest = Manifest {
        architecture: args.model.architecture().name().into(),
        input_shape: args.model.query_shape().to_vec(),
        output_len: crate::models::CLASSES,
        layout: "burn",
        tensors,
    };
    let path = args.output.join("manifest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&manifest)? + "\n")
        .with_context(|| format!("{}", path.display()))?;
    writeln!(out, "{} arrays of {} in {}", manifest.tensors.len(), manifest.architecture, args.output.display())?;
    Ok(())
}
