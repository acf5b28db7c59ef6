//! Calibration files: what `approxifer calibrate` writes and `decode`, `eval` and `serve` read
//! (JSON; one calibration as itself, several under `"calibrations"`), and what a service
//! learning from traffic saves for its next start ([`save`]).

use std::path::Path;
use std::sync::Arc;

use crate::kernels::{Calibration, Code};

/// Why a calibration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationFileError {
    #[error("reading calibration {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("calibration {path} is not one `approxifer calibrate` wrote: {source}")]
    Format { path: String, source: serde_json::Error },
    #[error("calibration {path} holds no calibration")]
    Empty { path: String },
}

/// What a calibration file holds: one code's calibration, or several (`approxifer calibrate
/// --partial`: a code's and those of the codes `serve` forms for its partial groups).
#[derive(Clone, Debug, PartialEq)]
pub struct Calibrations(Vec<Arc<Calibration>>);

impl Calibrations {
    /// The one learnt for `code`, else the first (whose use is then an error that says what
    /// differs: [`Calibration::check`]).
    pub fn for_code(&self, code: &Code) -> Arc<Calibration> {
        self.0.iter().find(|c| c.describes(code)).unwrap_or(&self.0[0]).clone()
    }

    /// The one for codes of `k` queries, if the file has one.
    pub fn with_queries(&self, k: usize) -> Option<Arc<Calibration>> {
        self.0.iter().find(|c| c.queries == k).cloned()
    }

    /// Every calibration but those for codes of `k` queries.
    pub fn without_queries(&self, k: usize) -> Vec<Arc<Calibration>> {
        self.0.iter().filter(|c| c.queries != k).cloned().collect()
    }

    /// The codes' `K`, as the file lists them.
    pub fn queries(&self) -> Vec<usize> {
        self.0.iter().map(|c| c.queries).collect()
    }
}

/// The key under which a file of several calibrations lists them.
const SEVERAL: &str = "calibrations";

/// Reads a calibration file written by [`write`].
pub fn read(path: &Path) -> Result<Calibrations, CalibrationFileError> {
    let name = || path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| CalibrationFileError::Io { path: name(), source })?;
    let format = |source| CalibrationFileError::Format { path: name(), source };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(format)?;
    let calibrations: Vec<Calibration> = match value.get(SEVERAL) {
        Some(several) => serde_json::from_value(several.clone()).map_err(format)?,
        None => vec![serde_json::from_value(value).map_err(format)?],
    };
    if calibrations.is_empty() {
        return Err(CalibrationFileError::Empty { path: name() });
    }
    Ok(Calibrations(calibrations.into_iter().map(Arc::new).collect()))
}

/// Writes `calibrations` as JSON: one as itself (as files have always been), several under
/// `"calibrations"`.
pub fn write(path: &Path, calibrations: &[Calibration]) -> Result<(), CalibrationFileError> {
    let io = |source| CalibrationFileError::Io { path: path.display().to_string(), source };
    let text = match calibrations {
        [one] => serde_json::to_string(one),
        several => serde_json::to_string(&serde_json::json!({ SEVERAL: several })),
    }
    .map_err(|e| io(std::io::Error::other(e)))?;
    std::fs::write(path, text).map_err(io)
}

/// [`write`]s `calibrations` beside `path` and renames the file into place once whole, so a
/// reader (a service starting) never sees half a file, and a failed write leaves the older one.
pub fn save(path: &Path, calibrations: &[Calibration]) -> Result<(), CalibrationFileError> {
    let io = |source| CalibrationFileError::Io { path: path.display().to_string(), source };
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staged = tempfile::Builder::new().prefix(".approxifer-").suffix(".json").tempfile_in(parent).map_err(io)?;
    write(staged.path(), calibrations)?;
    staged.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{CalibrationBuilder, CodeParams};

    /// Whether `read` is `written` as a file gives it back: serde_json reads a float back to
    /// within its last bit (exactly only with its `float_roundtrip` feature, which Burn's
    /// crates would all be rebuilt for).
    fn same(read: &Calibration, written: &Calibration) -> bool {
        let shape = |c: &Calibration| (c.queries, c.workers, c.row_len, c.groups, c.summary().len());
        let close = read
            .summary()
            .iter()
            .zip(written.summary())
            .all(|(a, b)| a.samples == b.samples && (a.threshold - b.threshold).abs() <= 1e-12 * b.threshold.abs());
        shape(read) == shape(written) && close
    }

    /// A calibration of `code` from honest answers of a smooth model (3 outputs).
    fn calibration(code: &Code) -> Calibration {
        let n = code.params().workers();
        let value = |i: usize| (i / 3 % n) as f32 * 0.3 + (i % 3) as f32 + (i / (3 * n) * 7919 % 101) as f32 * 0.01;
        let answers: Vec<f32> = (0..200 * n * 3).map(|i| value(i).sin()).collect();
        let mut builder = CalibrationBuilder::new(code, 3, usize::MAX).unwrap();
        builder.observe(&answers, &vec![true; 200 * n]).unwrap();
        builder.fit(0.01).unwrap()
    }

    #[test]
    fn one_calibration_is_written_as_itself_and_several_under_their_key_each_found_by_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let full = Code::new(CodeParams::builder(3, 7).byzantine(1).build().unwrap()).unwrap();
        let partial = full.for_queries(2).unwrap();
        let (one, other) = (calibration(&full), calibration(&partial));

        let path = dir.path().join("one.json");
        write(&path, std::slice::from_ref(&one)).unwrap();
        let text: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(text["queries"], 3, "a file of one calibration is that calibration, as files always were");
        assert!(same(&read(&path).unwrap().for_code(&full), &one));

        let path = dir.path().join("several.json");
        write(&path, &[one.clone(), other.clone()]).unwrap();
        let read = read(&path).unwrap();
        assert!(same(&read.for_code(&full), &one) && same(&read.for_code(&partial), &other));
        assert_eq!(read.queries(), [3, 2]);
        assert!(same(&read.with_queries(3).unwrap(), &one));
        assert_eq!(read.without_queries(3).len(), 1);
        // A code the file has none for gets the first, whose check says what differs.
        let unknown = Code::new(CodeParams::builder(3, 8).byzantine(1).build().unwrap()).unwrap();
        assert!(read.for_code(&unknown).check(&unknown, 3).is_err());
    }

    #[test]
    fn an_empty_list_or_a_broken_entry_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calibration.json");
        let error = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read(&path).unwrap_err().to_string()
        };
        assert!(error(r#"{"calibrations": []}"#).contains("holds no calibration"));
        assert!(error(r#"{"calibrations": [{"queries": 2}]}"#).contains("is not one `approxifer calibrate` wrote"));
        assert!(error(r#"{"queries": 2}"#).contains("is not one `approxifer calibrate` wrote"));
        assert!(error("[").contains(&path.display().to_string()));
    }
}
