//! Reading and writing `.npy` tensors (C order; float16, float32 or float64).
//!
//! Files are read whole and the header is checked against the payload before any element is
//! decoded, so a truncated file or a header that claims a huge shape is an error, not an
//! allocation failure. Files are written to a temporary file beside the target and renamed
//! into place, so a failed write never leaves a partial output behind.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use half::f16;
use npyz::{DType, NpyFile, TypeChar, WriterBuilder};

/// A tensor's elements in the dtype it was stored with.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F16(v) => v.len(),
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The numpy name of the dtype.
    pub fn dtype(&self) -> &'static str {
        match self {
            Data::F16(_) => "float16",
            Data::F32(_) => "float32",
            Data::F64(_) => "float64",
        }
    }
}

/// Applies one generic expression to whichever element type a [`Data`] holds, wrapping the
/// result back in the same variant: `map_data!(data, v => cpu::encode_to_vec(&code, &v, d)?)`.
#[macro_export]
macro_rules! map_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::npy::Data::F16($v) => $crate::npy::Data::F16($body),
            $crate::npy::Data::F32($v) => $crate::npy::Data::F32($body),
            $crate::npy::Data::F64($v) => $crate::npy::Data::F64($body),
        }
    };
}

/// A C-order tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: Data,
}

/// What can go wrong with a `.npy` file. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },
    #[error("{} is not a valid .npy file: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{} has dtype {dtype}; expected float16, float32 or float64", path.display())]
    UnsupportedDtype { path: PathBuf, dtype: String },
    #[error("{} is in Fortran order; save it in C order (numpy.ascontiguousarray)", path.display())]
    FortranOrder { path: PathBuf },
    #[error("{} is a 0-d array; expected at least one dimension", path.display())]
    Scalar { path: PathBuf },
    #[error("{} is truncated: its header promises {expected} data bytes, it holds {actual}", path.display())]
    Truncated { path: PathBuf, expected: u128, actual: usize },
}

/// Reads a float `.npy` file.
pub fn read(path: &Path) -> Result<Array, NpyError> {
    let bytes = std::fs::read(path).map_err(|cause| NpyError::Read { path: path.into(), cause })?;
    parse(&bytes, path)
}

fn parse(bytes: &[u8], path: &Path) -> Result<Array, NpyError> {
    let malformed = |reason: String| NpyError::Malformed { path: path.into(), reason };
    let file = NpyFile::new(bytes).map_err(|e| malformed(e.to_string()))?;
    if file.shape().is_empty() {
        return Err(NpyError::Scalar { path: path.into() });
    }
    if file.order() == npyz::Order::Fortran {
        return Err(NpyError::FortranOrder { path: path.into() });
    }
    let (type_char, width) = match file.dtype() {
        DType::Plain(ts) => (ts.type_char(), ts.size_field()),
        other => return Err(NpyError::UnsupportedDtype { path: path.into(), dtype: other.descr() }),
    };
    let shape = file
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| malformed("a dimension does not fit in memory".into()))?;
    // Every partial product of the dimensions must fit in memory sizes, even when another
    // dimension is zero (callers multiply trailing dimensions to get row lengths).
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| malformed(format!("shape {shape:?} is too large")))?;
    let count: u128 = shape.iter().map(|&d| d as u128).product();
    let expected = count.saturating_mul(u128::from(width));
    // Split off the payload (the reader stops right after the header) and check its size
    // before decoding, so a lying header cannot trigger a huge allocation.
    let header = file.header().clone();
    let payload: &[u8] = file.into_inner();
    if expected > payload.len() as u128 {
        return Err(NpyError::Truncated { path: path.into(), expected, actual: payload.len() });
    }
    let file = NpyFile::with_header(header, payload);
    let read_err = |e: io::Error| malformed(e.to_string());
    let data = match (type_char, width) {
        (TypeChar::Float, 2) => Data::F16(file.into_vec().map_err(read_err)?),
        (TypeChar::Float, 4) => Data::F32(file.into_vec().map_err(read_err)?),
        (TypeChar::Float, 8) => Data::F64(file.into_vec().map_err(read_err)?),
        _ => return Err(NpyError::UnsupportedDtype { path: path.into(), dtype: file.dtype().descr() }),
    };
    Ok(Array { shape, data })
}

/// An output file being written: a temporary file beside the target, renamed into place by
/// [`OutputFile::write`]. Creating it first checks that the output can be written before any
/// work is done; dropping it unwritten leaves nothing behind.
#[derive(Debug)]
pub struct OutputFile {
    path: PathBuf,
    tmp: tempfile::NamedTempFile,
}

impl OutputFile {
    /// Prepares to write `path`.
    pub fn create(path: &Path) -> Result<Self, NpyError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| write_error(path, e))?;
        Ok(OutputFile { path: path.into(), tmp })
    }

    /// Writes `data` with `shape` and moves the file into place.
    pub fn write(self, shape: &[usize], data: &Data) -> Result<(), NpyError> {
        let path = &self.path;
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        {
            let mut out = BufWriter::new(self.tmp.as_file());
            match data {
                Data::F16(v) => write_elements(&mut out, &shape, v),
                Data::F32(v) => write_elements(&mut out, &shape, v),
                Data::F64(v) => write_elements(&mut out, &shape, v),
            }
            .map_err(|e| write_error(path, e))?;
            out.flush().map_err(|e| write_error(path, e))?;
        }
        self.tmp.persist(path).map_err(|e| write_error(path, e.error))?;
        Ok(())
    }
}

fn write_error(path: &Path, cause: io::Error) -> NpyError {
    // tempfile's errors name the temporary path; the user knows the output path.
    NpyError::Write { path: path.into(), cause: io::Error::new(cause.kind(), cause.kind().to_string()) }
}

/// Writes `data` with `shape` to `path` atomically (temporary file, then rename).
pub fn write(path: &Path, shape: &[usize], data: &Data) -> Result<(), NpyError> {
    OutputFile::create(path)?.write(shape, data)
}

fn write_elements<T: npyz::AutoSerialize + Copy>(out: impl Write, shape: &[u64], values: &[T]) -> io::Result<()> {
    let mut writer = npyz::WriteOptions::new().default_dtype().shape(shape).writer(out).begin_nd()?;
    writer.extend(values.iter().copied())?;
    writer.finish()
}
