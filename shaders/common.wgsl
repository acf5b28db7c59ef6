// Declarations shared by every kernel; the host places them after the header and before the
// kernel's own source.
//
// Binding convention (the same on raw wgpu and inside Burn, whose launcher binds a kernel's
// buffers in order and then one uniform block): storage tensors first, then a uniform `Info`
// holding these `Params` and, for the codec kernels, the code's constant table.

struct Params {
    // Groups in this dispatch (a chunk of the batch).
    groups: u32,
    // Packed elements per row (D / 4 for vec4, D for scalars).
    row_len: u32,
    // Invocations per grid row: workgroups in x times WORKGROUP (grids are 2D when large).
    grid_width: u32,
    // Where this chunk starts within each chunked binding, in packed elements (mask words for
    // masks): bindings must begin at aligned offsets, chunks need not.
    input_base: u32,
    output_base: u32,
    mask_base: u32,
    _pad0: u32,
    _pad1: u32,
}
