//! Shape checks shared by the CPU and GPU paths, so both reject the same inputs the same way.

use crate::error::{Error, Result};

/// The number of groups in a buffer of `len` values with `rows_per_group` rows of `row_len`.
pub(crate) fn whole_groups(what: &'static str, len: usize, rows_per_group: usize, row_len: usize) -> Result<usize> {
    if row_len == 0 {
        return Err(Error::EmptyRows { what });
    }
    let group_len = rows_per_group * row_len;
    if len % group_len != 0 {
        return Err(Error::NotWholeGroups { what, len, rows_per_group, row_len });
    }
    Ok(len / group_len)
}

/// Checks that a buffer holds exactly the values the other arguments imply.
pub(crate) fn expect_len(what: &'static str, actual: usize, expected: usize) -> Result<()> {
    if actual != expected {
        return Err(Error::ShapeMismatch { what, expected, actual });
    }
    Ok(())
}
