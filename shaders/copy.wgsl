// A plain copy, dst = src: the bandwidth reference the codec kernels are measured against.
// Same header and params (common.wgsl) as encode.wgsl, with one row per group.

struct Info {
    params: Params,
}

@group(0) @binding(0) var<storage, read_write> src: array<Packed>;
@group(0) @binding(1) var<storage, read_write> dst: array<Packed>;
@group(0) @binding(2) var<uniform> info: Info;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let params = info.params;
    let index = id.y * params.grid_width + id.x;
    if index >= params.groups * params.row_len {
        return;
    }
    dst[params.output_base + index] = src[params.input_base + index];
}
