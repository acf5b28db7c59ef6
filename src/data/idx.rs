//! The IDX format of MNIST and Fashion-MNIST, plain or gzipped: a magic word (two zero bytes,
//! a type code, the number of dimensions), the dimensions as big-endian `u32`s, then the
//! values. Only unsigned bytes (type `0x08`) occur in these datasets, and only they are read.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a dataset file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    #[error("{path}: not found (scripts/fetch-data.sh fetches the datasets)")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: truncated: the header promises {expected} bytes of values, the file holds {actual}")]
    Truncated { path: PathBuf, expected: usize, actual: usize },
    #[error("{path}: not an IDX file of unsigned bytes: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// An IDX array of bytes: its dimensions and values, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub values: Vec<u8>,
}

/// Reads `path`, gunzipping it when its name ends in `.gz`.
pub fn read(path: &Path) -> Result<IdxArray, IdxError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            IdxError::Missing { path: path.into() }
        } else {
            IdxError::Io { path: path.into(), source }
        }
    };
    let raw = std::fs::read(path).map_err(io)?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| IdxError::Corrupt { path: path.into(), reason: format!("gzip: {e}") })?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(|e| e.at(path))
}

/// A parse failure before it is tied to a file.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    Truncated { expected: usize, actual: usize },
    Corrupt(String),
}

impl ParseError {
    fn at(self, path: &Path) -> IdxError {
        match self {
            ParseError::Truncated { expected, actual } => IdxError::Truncated { path: path.into(), expected, actual },
            ParseError::Corrupt(reason) => IdxError::Corrupt { path: path.into(), reason },
        }
    }
}

/// Parses an IDX file's bytes. Trailing bytes past the values are corrupt, not ignored.
pub fn parse(bytes: &[u8]) -> Result<IdxArray, ParseError> {
    let magic = bytes.get(..4).ok_or_else(|| ParseError::Corrupt(format!("{} bytes, no header", bytes.len())))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(ParseError::Corrupt(format!("magic {magic:02x?} does not start with two zero bytes")));
    }
    if magic[2] != 0x08 {
        return Err(ParseError::Corrupt(format!("value type 0x{:02x}, expected 0x08 (unsigned byte)", magic[2])));
    }
    let ndims = usize::from(magic[3]);
    if ndims == 0 {
        return Err(ParseError::Corrupt("zero dimensions".into()));
    }
    let header = 4 + 4 * ndims;
    let dims_bytes =
        bytes.get(4..header).ok_or_else(|| ParseError::Corrupt(format!("header of {ndims} dimensions cut short")))?;
    let dims: Vec<usize> =
        dims_bytes.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize).collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ParseError::Corrupt(format!("dimensions {dims:?} overflow")))?;
    let actual = bytes.len() - header;
    if actual < expected {
        return Err(ParseError::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(ParseError::Corrupt(format!("{} bytes past the {expected} values", actual - expected)));
    }
    Ok(IdxArray { dims, values: bytes[header..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], values: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(values);
        out
    }

    #[test]
    fn reads_dimensions_and_values() {
        let a = parse(&idx(&[2, 3], &[1, 2, 3, 4, 5, 6])).unwrap();
        assert_eq!(a, IdxArray { dims: vec![2, 3], values: vec![1, 2, 3, 4, 5, 6] });
    }

    #[test]
    fn every_malformation_is_named() {
        assert_eq!(parse(&idx(&[2, 3], &[1, 2])), Err(ParseError::Truncated { expected: 6, actual: 2 }));
        assert!(matches!(parse(&idx(&[1], &[1, 2])), Err(ParseError::Corrupt(r)) if r.contains("past")));
        assert!(matches!(parse(&[0, 0]), Err(ParseError::Corrupt(r)) if r.contains("no header")));
        assert!(matches!(parse(&[1, 0, 8, 1, 0, 0, 0, 0]), Err(ParseError::Corrupt(r)) if r.contains("magic")));
        assert!(matches!(parse(&[0, 0, 0x0d, 1, 0, 0, 0, 0]), Err(ParseError::Corrupt(r)) if r.contains("0x0d")));
        assert!(matches!(parse(&[0, 0, 8, 2, 0, 0, 0, 1]), Err(ParseError::Corrupt(r)) if r.contains("cut short")));
        assert!(matches!(parse(&[0, 0, 8, 0]), Err(ParseError::Corrupt(r)) if r.contains("zero")));
    }

    #[test]
    fn files_plain_gzipped_missing_and_corrupt() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let bytes = idx(&[2, 2], &[9, 8, 7, 6]);
        let plain = dir.path().join("a-idx2-ubyte");
        std::fs::write(&plain, &bytes).unwrap();
        let gz = dir.path().join("a-idx2-ubyte.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        assert_eq!(read(&plain).unwrap(), read(&gz).unwrap());

        assert!(matches!(read(&dir.path().join("nope")), Err(IdxError::Missing { .. })));
        let bad_gz = dir.path().join("bad.gz");
        std::fs::write(&bad_gz, b"not gzip").unwrap();
        assert!(matches!(read(&bad_gz), Err(IdxError::Corrupt { reason, .. }) if reason.starts_with("gzip")));
        let short = dir.path().join("short");
        std::fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
        let e = read(&short).unwrap_err();
        assert!(matches!(e, IdxError::Truncated { expected: 4, actual: 3, .. }), "{e}");
        assert!(e.to_string().contains("short"), "the message names the file: {e}");
    }
}
