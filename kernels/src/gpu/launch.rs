//! What a launch hands a kernel besides its tensors: the grid, and the uniform `Info` block
//! (`Params`, then the code's constant table; see `shaders/common.wgsl`). The raw-wgpu path
//! ([`super::Kernels`]) and the Burn path (the `approxifer` crate's fused ops) both build their
//! launches here, so the two cannot disagree on the layout the shaders read.

use super::shader::WORKGROUP_SIZE;

/// `Params` in `shaders/common.wgsl`, field for field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Params {
    /// Groups in this dispatch.
    pub groups: u32,
    /// Packed elements per row.
    pub row_len: u32,
    /// Invocations per grid row ([`Grid::width`]).
    pub grid_width: u32,
    /// Where the chunk starts within each chunked binding, in packed elements (mask words for
    /// masks): bindings begin at aligned offsets, chunks need not.
    pub input_base: u32,
    pub output_base: u32,
    pub mask_base: u32,
}

impl Params {
    /// The words of the uniform block: these params (padded to 16 bytes, WGSL's struct
    /// alignment in uniforms), then `table`, whose length must be a multiple of 4 (it is read as
    /// `array<vec4<f32>>`).
    pub fn info_words(&self, table: &[f32]) -> Vec<u32> {
        debug_assert_eq!(table.len() % 4, 0, "tables are padded to whole vec4s");
        let head =
            [self.groups, self.row_len, self.grid_width, self.input_base, self.output_base, self.mask_base, 0, 0];
        head.into_iter().chain(table.iter().map(|v| v.to_bits())).collect()
    }
}

/// Bytes of the uniform block for a table of `table_len` floats.
pub fn info_bytes(table_len: usize) -> u64 {
    32 + 4 * table_len as u64
}

/// A 2D grid of whole workgroups covering `invocations`: as wide as the adapter allows, then
/// as many rows as needed. The shaders rebuild the linear index as `y * width + x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// Workgroups in x and y.
    pub x: u32,
    pub y: u32,
    /// Invocations per grid row, `x * WORKGROUP_SIZE` (`Params::grid_width`).
    pub width: u32,
}

impl Grid {
    /// The grid for `invocations` with at most `max_per_dim` workgroups in each dimension.
    /// `None` when even that is too small (more than `max_per_dim^2` workgroups).
    pub fn cover(invocations: u64, max_per_dim: u32) -> Option<Grid> {
        let workgroups = invocations.div_ceil(u64::from(WORKGROUP_SIZE)).max(1);
        let x = workgroups.min(u64::from(max_per_dim));
        let y = workgroups.div_ceil(x);
        (y <= u64::from(max_per_dim)).then(|| Grid {
            x: x as u32,
            y: y as u32,
            width: (x * u64::from(WORKGROUP_SIZE)) as u32,
        })
    }
}

/// `table` rounded to `f32` and padded with zeros to a whole number of vec4s: the form a
/// code's table takes in the uniform block.
pub fn padded_f32(table: &[f64]) -> Vec<f32> {
    let mut out: Vec<f32> = table.iter().map(|&x| x as f32).collect();
    out.resize(out.len().next_multiple_of(4), 0.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_covers_every_invocation_in_whole_workgroups() {
        for (invocations, max) in [(1, 65535), (256, 65535), (257, 65535), (10_000_000, 65535), (4000, 4)] {
            let g = Grid::cover(invocations, max).unwrap();
            assert!(g.x <= max && g.y <= max);
            assert!(u64::from(g.x) * u64::from(g.y) * u64::from(WORKGROUP_SIZE) >= invocations);
            assert!((u64::from(g.y) - 1) * u64::from(g.width) < invocations.max(1), "no empty grid row");
        }
        assert_eq!(Grid::cover(256 * 17, 4), None);
    }

    #[test]
    fn info_words_put_params_first_then_the_table() {
        let p = Params { groups: 3, row_len: 5, grid_width: 256, input_base: 7, output_base: 9, mask_base: 11 };
        let words = p.info_words(&[1.0, -2.0, 0.5, 0.0]);
        assert_eq!(&words[..8], &[3, 5, 256, 7, 9, 11, 0, 0]);
        assert_eq!(words[8..].iter().map(|&w| f32::from_bits(w)).collect::<Vec<_>>(), [1.0, -2.0, 0.5, 0.0]);
        assert_eq!(words.len() as u64 * 4, info_bytes(4));
    }
}
