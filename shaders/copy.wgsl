// A plain copy, dst = src: the bandwidth reference the codec kernels are measured against.
// Same header and params as encode.wgsl, with one row per group.

struct Params {
    groups: u32,
    row_len: u32,
    grid_width: u32,
    input_base: u32,
    output_base: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> src: array<Packed>;
@group(0) @binding(1) var<storage, read_write> dst: array<Packed>;
@group(0) @binding(2) var<uniform> params: Params;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let index = id.y * params.grid_width + id.x;
    if index >= params.groups * params.row_len {
        return;
    }
    dst[params.output_base + index] = src[params.input_base + index];
}
