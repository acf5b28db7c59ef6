//! A small dense row-major `f64` matrix: the encode and decode weights.

use crate::error::{Error, Result};

/// A dense row-major matrix of coding weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Matrix {
    /// A `rows x cols` matrix whose row `r` is written by `fill_row(r, row)`.
    pub fn from_rows(rows: usize, cols: usize, mut fill_row: impl FnMut(usize, &mut [f64])) -> Self {
        let mut data = vec![0.0; rows * cols];
        if cols > 0 {
            for (r, row) in data.chunks_exact_mut(cols).enumerate() {
                fill_row(r, row);
            }
        }
        Matrix { rows, cols, data }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    /// All rows, in order.
    pub fn iter_rows(&self) -> impl Iterator<Item = &[f64]> {
        self.data.chunks_exact(self.cols.max(1)).take(self.rows)
    }
    /// The entries, row-major.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }
    /// The rows as nested vectors (for JSON and printing).
    pub fn to_nested(&self) -> Vec<Vec<f64>> {
        self.iter_rows().map(<[f64]>::to_vec).collect()
    }

    /// Rejects a matrix with a NaN or infinite entry, naming it `name` in the error. Valid
    /// codes never produce one; this guard keeps a numerical fault away from user data.
    pub fn ensure_finite(&self, name: &'static str) -> Result<()> {
        for (row, values) in self.iter_rows().enumerate() {
            if let Some((col, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFiniteWeight { matrix: name, row, col, value });
            }
        }
        Ok(())
    }
}
