// out[t, d] = table[ids[t], d] for the ids this shard of the table holds (rows first_row ..
// first_row + shard_rows); one dispatch per shard fills every row. Ids were range-checked on
// the host.

struct Params {
    rows: u32,
    dim: u32,
    first_row: u32,
    shard_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn embedding(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wg.x + wg.y * nwg.x) * 256u + li;
    if (i >= p.rows * p.dim) {
        return;
    }
    let row = i / p.dim;
    let d = i - row * p.dim;
    // Unsigned: ids below first_row wrap around and fail the test too.
    let local = ids[row] - p.first_row;
    if (local < p.shard_rows) {
        out[i] = table[local * p.dim + d];
    }
}
