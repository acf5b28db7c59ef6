//! Models, data and evaluation on the real datasets (fetched by scripts/fetch-data.sh, which
//! scripts/test.sh runs first) and on the embedded sample.

use std::path::PathBuf;

use approxifer::data::{self, Dataset, Split};
use approxifer::eval::{EvalConfig, Outputs, Setting, evaluate};
use approxifer::kernels::Layout;
use approxifer::models::{self, Architecture, Classifier};
use approxifer::train::{TrainConfig, accuracy, train};
use burn::tensor::{Device, DeviceKind, Distribution, Tensor};

fn gpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

/// Burn's CPU backend: on a machine without a GPU, two orders of magnitude faster than a CPU
/// Vulkan driver for convolutions, so the full-test-set checks run there.
fn cpu() -> Device {
    Device::flex()
}

/// The data directory; a clear failure when it has not been fetched.
fn data_dir() -> PathBuf {
    let dir = data::default_dir();
    let dir = if dir.is_relative() { PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir) } else { dir };
    assert!(
        dir.join("mnist").is_dir() && dir.join("fashion-mnist").is_dir() && dir.join("models").is_dir(),
        "{} has no datasets: run scripts/fetch-data.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

#[test]
fn both_datasets_load_with_their_published_sizes() {
    let dir = data_dir();
    for dataset in [Dataset::Mnist, Dataset::FashionMnist] {
        let train = data::load(&dir, dataset, Split::Train).unwrap();
        let test = data::load(&dir, dataset, Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (60_000, 10_000), "{dataset:?}");
        assert_eq!((train.rows, train.cols), (28, 28));
        let mut counts = [0usize; 10];
        test.labels.iter().for_each(|&l| counts[usize::from(l)] += 1);
        assert!(counts.iter().all(|&c| c >= 800), "{dataset:?} test classes {counts:?}");
    }
}

#[test]
fn the_pretrained_digit_cnn_reaches_099_on_the_mnist_test_set() {
    let dir = data_dir();
    let model = models::load(Architecture::DigitCnn, &dir.join("models/digit_recognizer.pth"), &cpu()).unwrap();
    let test = data::load(&dir, Dataset::Mnist, Split::Test).unwrap();
    let acc = accuracy(&model, &test, Dataset::Mnist, &cpu(), 500);
    eprintln!("digit CNN: MNIST test accuracy {acc}");
    assert!(acc >= 0.99, "digit CNN test accuracy {acc}");
}

#[test]
fn a_wrong_weights_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = models::load(Architecture::DigitCnn, &dir.path().join("none.pth"), &gpu()).unwrap_err();
    assert!(missing.to_string().contains("fetch-data"), "{missing}");
    let junk = dir.path().join("junk.pth");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    assert!(matches!(models::load(Architecture::DigitCnn, &junk, &gpu()), Err(models::ModelError::Weights { .. })));
    assert!(matches!(models::load(Architecture::Lenet5, &junk, &gpu()), Err(models::ModelError::Weights { .. })));
}

#[test]
fn every_zoo_model_maps_images_to_ten_logits_and_round_trips_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let images = Tensor::<4>::random([3, 1, 28, 28], Distribution::Default, &gpu());
    for architecture in [Architecture::Mlp, Architecture::Lenet5, Architecture::Resnet, Architecture::DigitCnn] {
        let model = Classifier::init(architecture, &gpu());
        let logits = model.forward(images.clone());
        assert_eq!(logits.dims(), [3, 10], "{architecture:?}");
        if architecture == Architecture::DigitCnn {
            continue; // loaded from PyTorch, not saved by us
        }
        let path = dir.path().join(format!("{}.bpk", architecture.name()));
        models::save(&model, &path).unwrap();
        let loaded = models::load(architecture, &path, &gpu()).unwrap();
        let again = loaded.forward(images.clone());
        logits.into_data().assert_approx_eq::<f32>(&again.into_data(), burn::tensor::Tolerance::default());
    }
}

#[test]
fn training_an_mlp_briefly_learns_fashion_mnist() {
    let dir = data_dir();
    let train_set = data::load(&dir, Dataset::FashionMnist, Split::Train).unwrap().take(3000);
    let test_set = data::load(&dir, Dataset::FashionMnist, Split::Test).unwrap().take(1000);
    let config = TrainConfig {
        architecture: Architecture::Mlp,
        dataset: Dataset::FashionMnist,
        epochs: 2,
        batch_size: 64,
        learning_rate: 1e-3,
        seed: 3,
    };
    let mut progress = 0;
    let (model, reports) = train(&config, &train_set, &test_set, &cpu(), |done, _| progress = done, |_| {}).unwrap();
    assert_eq!(reports.len(), 2);
    assert_eq!(progress, 2 * 3000usize.div_ceil(64));
    assert!(reports[1].mean_loss < reports[0].mean_loss, "{reports:?}");
    let acc = accuracy(&model, &test_set, Dataset::FashionMnist, &cpu(), 500);
    assert!(acc > 0.7, "accuracy after 2 short epochs: {acc}");
    assert!((acc - reports[1].test_accuracy).abs() < 1e-9, "the report is the model's accuracy");
}

#[test]
fn the_embedded_model_serves_coded_queries_by_both_protocols() {
    let model = approxifer::embedded::model(&gpu()).unwrap();
    let sample = approxifer::embedded::sample();
    let settings = vec![
        Setting { k: 4, stragglers: 1, layout: Layout::NonSystematic },
        Setting { k: 4, stragglers: 1, layout: Layout::Systematic },
    ];
    let config = EvalConfig {
        dataset: Dataset::FashionMnist,
        model: "lenet5".into(),
        settings,
        queries: 400,
        batch_groups: 32,
        outputs: Outputs::Softmax,
        nodes: None,
        seed: 1,
    };
    let rows = evaluate(&model, &sample, &config, &gpu(), |_, _| {}).unwrap();
    for r in &rows {
        assert_eq!((r.queries, r.n), (400, 5));
        assert!(r.base_accuracy > 0.8, "{r:?}");
        // Coding costs accuracy, and losing a worker costs more; but it stays useful.
        assert!(
            r.normal_accuracy <= r.base_accuracy + 0.02 && r.degraded_accuracy_paper <= r.normal_accuracy + 0.02,
            "{r:?}"
        );
        assert!(r.degraded_accuracy_paper > 0.5, "{r:?}");
    }
    // Non-systematic: every prediction is reconstructed. Systematic: only those whose worker
    // straggled (one in N = 5 of them, on average).
    assert_eq!(rows[0].reconstructed, 400);
    assert!(rows[1].reconstructed > 20 && rows[1].reconstructed < 160, "{:?}", rows[1]);
}
