// out[t, d] = table[ids[t], d] for the ids this shard of the table holds (rows first_row ..
// first_row + shard_rows); one launch per shard fills every row. The CUDA twin of
// embedding.wgsl; ids were range-checked on the host.

struct Params {
    unsigned rows;
    unsigned dim;
    unsigned first_row;
    unsigned shard_rows;
};

extern "C" __global__ void __launch_bounds__(256) embedding(const Params p, const unsigned* ids, const float* table,
                                     float* out) {
    unsigned i = (blockIdx.x + blockIdx.y * gridDim.x) * 256u + threadIdx.x;
    if (i >= p.rows * p.dim) return;
    unsigned row = i / p.dim;
    unsigned d = i - row * p.dim;
    // Unsigned: ids below first_row wrap around and fail the test too.
    unsigned local = ids[row] - p.first_row;
    if (local < p.shard_rows) out[i] = table[(size_t)local * p.dim + d];
}
