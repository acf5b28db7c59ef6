// Batched Berrut encode: coded[b, n, :] = sum_j E[n, j] * queries[b, j, :]. For a private code
// the K here is K + T: each group's queries are followed by its T masks, and E has K + T columns.
//
// CPU twin: kernels/src/cpu/encode.rs (via cpu/combine.rs).
//
// The host prepends a header that fixes, at pipeline creation:
//   Elem      the storage type (f32, or f16 with `enable f16;`)
//   Packed    what one invocation moves per row: vec4<Elem> when rows are a multiple of 4
//             long, else Elem
//   PackedAcc the same in f32, where sums are formed
//   K, N      queries and workers per group, as constants: the K inputs of a column sit in
//             a fixed-size private array, so each input element is read from memory once
//             and each output written once
//   WORKGROUP the workgroup size
// Params: see common.wgsl. Every index is guarded: the grid is rounded up to whole
// workgroups and is 2D for large tensors.

struct Info {
    params: Params,
    // The encode matrix E, [N, K] row-major, padded to whole vec4s (uniform arrays have a
    // 16-byte stride). Uniform, not storage: every invocation reads every weight, and uniform
    // reads are broadcast (on lavapipe 4.2 against 2.6 GB/s).
    weights: array<vec4<f32>, (N * K + 3u) / 4u>,
}

@group(0) @binding(0) var<storage, read_write> queries: array<Packed>;  // [groups, K, row_len]
@group(0) @binding(1) var<storage, read_write> coded: array<Packed>;    // [groups, N, row_len]
@group(0) @binding(2) var<uniform> info: Info;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let params = info.params;
    let index = id.y * params.grid_width + id.x;
    if index >= params.groups * params.row_len {
        return;
    }
    let group = index / params.row_len;
    let column = index % params.row_len;

    var x: array<PackedAcc, K>;
    for (var j = 0u; j < K; j++) {
        x[j] = PackedAcc(queries[params.input_base + (group * K + j) * params.row_len + column]);
    }
    for (var n = 0u; n < N; n++) {
        var sum = PackedAcc(0.0);
        for (var j = 0u; j < K; j++) {
            let w = n * K + j;
            sum += info.weights[w / 4u][w % 4u] * x[j];
        }
        coded[params.output_base + (group * N + n) * params.row_len + column] = Packed(sum);
    }
}
