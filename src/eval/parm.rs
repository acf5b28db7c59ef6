//! ParM's side of `eval`: the same queries and the same stragglers as ApproxIFER's settings
//! (one seed), `K` data workers answering the hosted model on the raw queries and a parity
//! worker the parity model on their sum ([`crate::parm`]).

use burn::tensor::Device;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::{EvalConfig, EvalError, EvalRow, Outputs, straggler_masks};
use crate::data::Images;
use crate::models::{CLASSES, Classifier};
use crate::parm;
use crate::train::image_tensor;

/// ParM at `k` queries per group with `parity`: one row, S = 1 (one parity model rebuilds one
/// missing prediction). `degraded_accuracy_paper`: one random worker of the `K + 1` missing
/// per group, drawn as ApproxIFER's settings draw theirs; `degraded_accuracy_reconstructed`:
/// ParM's protocol, each member of each group erased in turn and rebuilt.
pub fn evaluate_parm(
    hosted: &Classifier,
    parity: &Classifier,
    k: usize,
    test: &Images,
    config: &EvalConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalRow, EvalError> {
    let queries = config.queries.min(test.len());
    let groups = queries / k;
    if groups == 0 || k < 2 {
        return Err(EvalError::TooFewQueries { queries, k, available: test.len() });
    }
    let n = k + 1;
    // The queries and straggler draws of `evaluate`'s settings with this K and S = 1.
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..test.len()).collect();
    order.shuffle(&mut rng);
    order.truncate(groups * k);
    let (mut base, mut degraded, mut rebuilt_correct, mut rebuilt) = (0, 0, 0, 0);
    let mut done = 0;
    for batch in order.chunks(config.batch_groups.max(1) * k) {
        let b = batch.len() / k;
        let images = test.gather(batch);
        let logits = hosted.forward(image_tensor(&images, 0..batch.len(), config.dataset, device));
        let hosted_logits =
            logits.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| EvalError::Data(format!("{e:?}")))?;
        let classes: Vec<usize> = hosted_logits.chunks_exact(CLASSES).map(parm::argmax).collect();
        let local: Vec<Vec<usize>> = (0..b).map(|g| (g * k..(g + 1) * k).collect()).collect();
        let parity_outputs = parm::parity_outputs(parity, &images, config.dataset, &local, device);
        let masks = straggler_masks(b, n, 1, &mut rng);
        for (g, members) in local.iter().enumerate() {
            let output = &parity_outputs[g * CLASSES..(g + 1) * CLASSES];
            let missing = (0..n).find(|&w| !masks[g * n + w]);
            for (j, &q) in members.iter().enumerate() {
                let label = usize::from(images.labels[q]);
                let others: Vec<&[f32]> = members
                    .iter()
                    .filter(|&&i| i != q)
                    .map(|&i| &hosted_logits[i * CLASSES..(i + 1) * CLASSES])
                    .collect();
                let rebuilt_class = parm::argmax(&parm::reconstruct(output, &others));
                base += usize::from(classes[q] == label);
                rebuilt += 1;
                rebuilt_correct += usize::from(rebuilt_class == label);
                // Data worker j missing: its prediction is the rebuilt one.
                let answered = if missing == Some(j) { rebuilt_class } else { classes[q] };
                degraded += usize::from(answered == label);
            }
        }
        done += b;
        progress(done, groups);
    }
    let total = (groups * k) as f64;
    Ok(EvalRow {
        scheme: "parm".into(),
        dataset: config.dataset.name().into(),
        model: config.model.clone(),
        k,
        n,
        stragglers: 1,
        layout: "systematic".into(),
        nodes: "addition".into(),
        outputs: Outputs::Logits,
        base_accuracy: base as f64 / total,
        // Every data worker answering: the hosted model's own predictions.
        normal_accuracy: base as f64 / total,
        degraded_accuracy_paper: degraded as f64 / total,
        degraded_accuracy_reconstructed: Some(rebuilt_correct as f64 / rebuilt as f64),
        reconstructed: rebuilt,
        queries: groups * k,
    })
}
