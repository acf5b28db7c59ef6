// Batched Berrut decode with a responder mask per group:
//   decoded[b, j, :] = sum_{i in F_b} w_i(alpha_j) * outputs[b, i, :]
// where F_b = { i : mask[b, i] != 0 } and w are Berrut's weights over the responders' nodes,
// computed here from the mask and the node-difference table, with no host round trip.
//
// CPU twin: kernels/src/cpu/decode.rs. The CPU normalises the weights and then sums; here the
// numerator and denominator are summed in one pass over the responders and divided once, the
// same formula in a different order (equal within f32 rounding).
//
// Header: see encode.wgsl; bindings and params: common.wgsl.
// Rows of workers that did not respond are never read, so they may hold anything (NaN too).

struct Info {
    params: Params,
    // alpha_j - beta_n, [K, N] row-major, padded to whole vec4s.
    differences: array<vec4<f32>, (K * N + 3u) / 4u>,
}

@group(0) @binding(0) var<storage, read_write> outputs: array<Packed>;    // [groups, N, row_len]
@group(0) @binding(1) var<storage, read_write> decoded: array<Packed>;    // [groups, K, row_len]
@group(0) @binding(2) var<storage, read_write> masks: array<u32>;         // [groups, N], 0 = no answer
@group(0) @binding(3) var<uniform> info: Info;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let params = info.params;
    let index = id.y * params.grid_width + id.x;
    if index >= params.groups * K * params.row_len {
        return;
    }
    let column = index % params.row_len;
    let row = index / params.row_len;  // group * K + j
    let group = row / K;
    let j = row % K;

    // Berrut, first form: sign alternates by position among the responders (sorted node
    // order, which is worker order); a zero difference means alpha_j is that worker's node.
    var numerator = PackedAcc(0.0);
    var denominator = 0.0;
    var sign = 1.0;
    for (var i = 0u; i < N; i++) {
        if masks[params.mask_base + group * N + i] == 0u {
            continue;
        }
        let value = PackedAcc(outputs[params.input_base + (group * N + i) * params.row_len + column]);
        let d = j * N + i;
        let difference = info.differences[d / 4u][d % 4u];
        if difference == 0.0 {
            decoded[params.output_base + index] = Packed(value);
            return;
        }
        let weight = sign / difference;
        numerator += weight * value;
        denominator += weight;
        sign = -sign;
    }
    decoded[params.output_base + index] = Packed(numerator / denominator);
}
