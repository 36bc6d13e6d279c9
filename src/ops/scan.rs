//! The Mamba-1 selective scan (mamba_ssm `selective_scan_ref` semantics), prefill and decode.

use crate::error::Result;
use crate::ops::matmul::matmul;
use crate::ops::{kernel, silu, softplus, Carry};
use crate::runtime::{Backend, Context, MatView, Recorder, Tensor};

/// The kernel keeps the state in 16 named registers.
pub const MAX_STATE: usize = 16;

/// The largest dt rank whose projection the kernel computes itself (four vec4s of weights per
/// channel, held for the whole walk).
pub const MAX_FUSED_DT_RANK: usize = 16;

const HAS_Z: u32 = 1;
const SOFTPLUS: u32 = 2;
const USE_STATE: u32 = 4;
const WRITE_STATE: u32 = 8;
const REVERSE: u32 = 16;
const ACCUMULATE: u32 = 32;
const UNGATED: u32 = 64;
const UNGATED_CLIP: u32 = 128;
const UNGATED_ADD: u32 = 256;
const GAP_DECAY: u32 = 512;
const RAGGED: u32 = 1024;
/// How many vec4s a projected delta's rank spans, in bits 11-13 (0: delta is given).
const DT_VEC4S_SHIFT: u32 = 11;

/// Channels per workgroup, in both variants.
const CHANNELS_PER_GROUP: usize = 64;

/// From this many tokens, the CUDA backend scans (this scan and the zig-zag one) with a block
/// per channel, parallel over the tokens; shorter inputs (decode steps) keep one thread per
/// channel. Not yet tuned on a GPU.
#[cfg(feature = "cuda")]
pub(crate) const CUDA_CHUNKED_MIN_LEN: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    len: u32,
    channels: u32,
    nstate: u32,
    u_offset: u32,
    u_stride: u32,
    dt_offset: u32,
    dt_stride: u32,
    b_offset: u32,
    c_offset: u32,
    bc_stride: u32,
    z_offset: u32,
    z_stride: u32,
    dt_rank: u32,
    _pad: [u32; 2],
}

/// Per-channel parameters in the layout the kernel binds: `[A (channels x nstate) | D | dt_bias]`,
/// with `A` already negative (`-exp(A_log)`). Missing `D` or bias are zeros.
pub fn pack_ssm_params(
    a: &[f32],
    d: Option<&[f32]>,
    dt_bias: Option<&[f32]>,
    channels: usize,
) -> Vec<f32> {
    let zeros = vec![0.0; channels];
    let mut v = Vec::with_capacity(a.len() + 2 * channels);
    v.extend_from_slice(a);
    v.extend_from_slice(d.unwrap_or(&zeros));
    v.extend_from_slice(dt_bias.unwrap_or(&zeros));
    v
}

/// Where the scan's dt (before its bias and softplus) comes from.
#[derive(Clone, Copy)]
pub enum Delta<'a> {
    /// `[batch * len, channels]`.
    Values(MatView<'a>),
    /// `q · weightᵀ`, Mamba's dt_proj without its bias (the scan adds that): `q` is
    /// `[batch * len, rank]` (x_proj's dt columns), `weight` `[channels, rank]`. On wgpu the
    /// kernel computes it per step where it can (rank up to [`MAX_FUSED_DT_RANK`], `q` beside B
    /// and C in one tensor, the subgroup variant); elsewhere a matmul does it first.
    Projected { q: MatView<'a>, weight: &'a Tensor },
}

pub struct ScanArgs<'a> {
    /// `[batch * len, channels]`: the (conv'd) input.
    pub u: MatView<'a>,
    pub delta: Delta<'a>,
    /// `[batch * len, nstate]` each; B and C must be column slices of one tensor.
    pub b: MatView<'a>,
    pub c: MatView<'a>,
    /// From [`pack_ssm_params`].
    pub params: &'a Tensor,
    /// `[batch * len, channels]`: the gate, when the output is `y * silu(z)`.
    pub z: Option<MatView<'a>>,
    pub batch: usize,
    pub softplus: bool,
    /// Walk the tokens from last to first.
    pub reverse: bool,
    /// `[batch, channels, nstate]`.
    pub state: Carry<'a>,
    /// Add `y` into this `[batch * len, channels]` tensor (and return it) instead of a new one.
    pub accumulate: Option<&'a Tensor>,
    /// Also store `scan + D·u` before the gate (token importance for pruning).
    pub ungated: Option<Ungated<'a>>,
    /// u32 `[batch, len]`: the original position of each (kept) token. Before a token, the
    /// state decays as the pruned positions since the previous one would have decayed it
    /// (zero input, `delta = softplus(dt_bias)`): pruning's `decay` alignment.
    pub gap_positions: Option<&'a Tensor>,
}

/// Where [`selective_scan`] stores its ungated output, `[batch * len, channels]`.
#[derive(Clone, Copy)]
pub struct Ungated<'a> {
    pub tensor: &'a Tensor,
    /// Store `max(0, y)`.
    pub clip: bool,
    /// Add into the tensor (a second scan direction) instead of overwriting it.
    pub add: bool,
}

/// Whether the subgroup variant can read these inputs: B and C (and a projected delta's `q`
/// beside them) as vec4s, u, delta, z and the outputs (contiguous `[rows, channels]`) as vec2s
/// of channel pairs.
fn subgroup_layout(args: &ScanArgs) -> bool {
    let (b, c) = (args.b, args.c);
    let pairs = |offset: usize, stride: usize| offset.is_multiple_of(2) && stride.is_multiple_of(2);
    let delta = match args.delta {
        Delta::Values(d) => pairs(d.offset, d.stride),
        Delta::Projected { q, .. } => {
            std::ptr::eq(q.buffer(), b.buffer()) && q.stride == b.stride && q.offset % 4 == 0
        }
    };
    b.offset % 4 == 0
        && c.offset % 4 == 0
        && b.stride % 4 == 0
        && args.u.cols.is_multiple_of(2)
        && pairs(args.u.offset, args.u.stride)
        && delta
        && args.z.is_none_or(|z| pairs(z.offset, z.stride))
}

/// Returns `y` `[batch * len, channels]`.
pub fn selective_scan(rec: &mut Recorder, args: ScanArgs) -> Result<Tensor> {
    let subgroups = rec.context().uses_subgroups() && subgroup_layout(&args);
    if let Delta::Projected { q, weight } = args.delta {
        let fused =
            subgroups && q.cols <= MAX_FUSED_DT_RANK && rec.context().backend() == Backend::Wgpu;
        if !fused {
            let dt = matmul(rec, "dt_proj", q, weight, None)?; // [B·L, E]
            let args = ScanArgs {
                delta: Delta::Values(dt.mat()),
                ..args
            };
            return selective_scan(rec, args);
        }
    }
    let ScanArgs {
        u,
        delta,
        b,
        c,
        params,
        z,
        batch,
        softplus,
        reverse,
        state,
        accumulate,
        ungated,
        gap_positions,
    } = args;
    debug_assert!(std::ptr::eq(b.tensor.buffer(), c.tensor.buffer()) && b.stride == c.stride);
    let channels = u.cols;
    let nstate = b.cols;
    debug_assert!(nstate <= MAX_STATE);
    let out = match accumulate {
        Some(out) => out.clone(),
        None => rec.alloc("scan_out", &[u.rows, channels])?,
    };
    let (state_buf, read_state, write_state) = state.binding(rec);
    let flags = if z.is_some() { HAS_Z } else { 0 }
        | if softplus { SOFTPLUS } else { 0 }
        | if read_state != 0 { USE_STATE } else { 0 }
        | if write_state != 0 { WRITE_STATE } else { 0 }
        | if reverse { REVERSE } else { 0 }
        | if accumulate.is_some() { ACCUMULATE } else { 0 }
        | if gap_positions.is_some() {
            GAP_DECAY
        } else {
            0
        }
        | ungated.map_or(0, |g| {
            UNGATED | if g.clip { UNGATED_CLIP } else { 0 } | if g.add { UNGATED_ADD } else { 0 }
        })
        | match delta {
            Delta::Values(_) => 0,
            Delta::Projected { q, .. } => (q.cols.div_ceil(4) as u32) << DT_VEC4S_SHIFT,
        };
    // The kernel reads a projected delta's q through the B/C binding and the weight in
    // delta's place.
    let (dt_view, delta_buf, dt_rank) = match delta {
        Delta::Values(d) => (d, d.tensor.buffer(), 0),
        Delta::Projected { q, weight } => (q, weight.buffer(), q.cols),
    };
    let dummy_read = rec.context().inner.dummy.clone();
    let z_buf = z.map(|z| z.buffer().clone()).unwrap_or(dummy_read.clone());
    let positions_buf = gap_positions.map_or(&dummy_read, Tensor::buffer).clone();
    let ungated_buf = ungated.map_or_else(
        || rec.context().inner.dummy_rw.clone(),
        |g| g.tensor.buffer().clone(),
    );
    let p = Params {
        batch: batch as u32,
        len: (u.rows / batch) as u32,
        channels: channels as u32,
        nstate: nstate as u32,
        u_offset: u.offset as u32,
        u_stride: u.stride as u32,
        dt_offset: dt_view.offset as u32,
        dt_stride: dt_view.stride as u32,
        b_offset: b.offset as u32,
        c_offset: c.offset as u32,
        bc_stride: b.stride as u32,
        z_offset: z.map_or(0, |z| z.offset) as u32,
        z_stride: z.map_or(0, |z| z.stride) as u32,
        dt_rank: dt_rank as u32,
        _pad: [0; 2],
    };
    let flags = flags
        | if channels % CHANNELS_PER_GROUP != 0 {
            RAGGED
        } else {
            0
        };
    let buffers = [
        u.buffer(),
        delta_buf,
        b.buffer(),
        params.buffer(),
        &z_buf,
        &state_buf,
        out.buffer(),
        &ungated_buf,
        &positions_buf,
    ];
    #[cfg(feature = "cuda")]
    if rec.context().cuda().is_some() && p.len as usize >= CUDA_CHUNKED_MIN_LEN {
        // One block per (channel, sequence), parallel over the tokens (shaders/cuda/scan.cu).
        let kernel = kernel!("scan", "selective_scan_chunked").with_flags(flags & !RAGGED);
        rec.dispatch(&kernel, &p, &buffers, [channels as u32, batch as u32, 1]);
        return Ok(out);
    }
    let kernel = kernel!("scan", "selective_scan")
        .with_subgroups(subgroups)
        .with_flags(flags);
    let groups = [
        channels.div_ceil(CHANNELS_PER_GROUP) as u32,
        batch as u32,
        1,
    ];
    rec.dispatch(&kernel, &p, &buffers, groups);
    Ok(out)
}

/// Dense host inputs for [`selective_scan_ref`], token-major like the kernel.
pub struct ScanRef<'a> {
    pub batch: usize,
    pub len: usize,
    pub channels: usize,
    pub nstate: usize,
    /// `[batch, len, channels]`
    pub u: &'a [f32],
    pub delta: &'a [f32],
    /// `[batch, len, nstate]`
    pub b: &'a [f32],
    pub c: &'a [f32],
    /// `[channels, nstate]` (negative)
    pub a: &'a [f32],
    pub d: Option<&'a [f32]>,
    pub dt_bias: Option<&'a [f32]>,
    pub z: Option<&'a [f32]>,
    pub softplus: bool,
    pub reverse: bool,
    /// `[batch, len]`, see [`ScanArgs::gap_positions`].
    pub gap_positions: Option<&'a [u32]>,
}

/// [`ScanRef`]'s inputs on the GPU in the layout the kernel binds (B and C packed side by side
/// in one `[rows, 2 * nstate]` tensor, as the model's x_proj output holds them).
pub struct ScanTensors {
    u: Tensor,
    delta: Tensor,
    bc: Tensor,
    params: Tensor,
    z: Option<Tensor>,
    batch: usize,
    nstate: usize,
    softplus: bool,
    reverse: bool,
    gap_positions: Option<Tensor>,
}

impl ScanRef<'_> {
    pub fn upload(&self, ctx: &Context) -> Result<ScanTensors> {
        let (rows, e, n) = (self.batch * self.len, self.channels, self.nstate);
        let bc: Vec<f32> = self
            .b
            .chunks(n)
            .zip(self.c.chunks(n))
            .flat_map(|(b, c)| [b, c].concat())
            .collect();
        let params = pack_ssm_params(self.a, self.d, self.dt_bias, e);
        Ok(ScanTensors {
            u: ctx.upload_f32("u", &[rows, e], self.u)?,
            delta: ctx.upload_f32("delta", &[rows, e], self.delta)?,
            bc: ctx.upload_f32("bc", &[rows, 2 * n], &bc)?,
            params: ctx.upload_f32("ssm_params", &[params.len()], &params)?,
            z: self
                .z
                .map(|z| ctx.upload_f32("z", &[rows, e], z))
                .transpose()?,
            batch: self.batch,
            nstate: n,
            softplus: self.softplus,
            reverse: self.reverse,
            gap_positions: self
                .gap_positions
                .map(|p| ctx.upload_u32("positions", &[self.batch, self.len], p))
                .transpose()?,
        })
    }
}

impl ScanTensors {
    pub fn args<'a>(&'a self, state: Carry<'a>) -> ScanArgs<'a> {
        let n = self.nstate;
        ScanArgs {
            u: self.u.mat(),
            delta: Delta::Values(self.delta.mat()),
            b: self.bc.cols(0, n),
            c: self.bc.cols(n, n),
            params: &self.params,
            z: self.z.as_ref().map(Tensor::mat),
            batch: self.batch,
            softplus: self.softplus,
            reverse: self.reverse,
            state,
            accumulate: None,
            ungated: None,
            gap_positions: self.gap_positions.as_ref(),
        }
    }
}

/// CPU reference. `state` (`[batch, channels, nstate]`) is the initial state and receives the
/// final one. Returns `y` `[batch, len, channels]`.
pub fn selective_scan_ref(r: &ScanRef, state: &mut [f32]) -> Vec<f32> {
    let (l, e_n, n_n) = (r.len, r.channels, r.nstate);
    let mut out = vec![0.0; r.batch * l * e_n];
    for b in 0..r.batch {
        for e in 0..e_n {
            let h = &mut state[(b * e_n + e) * n_n..][..n_n];
            for s in 0..l {
                let t = if r.reverse { l - 1 - s } else { s };
                let row = b * l + t;
                let u = r.u[row * e_n + e];
                let bias = r.dt_bias.map_or(0.0, |v| v[e]);
                let mut dt = r.delta[row * e_n + e] + bias;
                if r.softplus {
                    dt = softplus(dt);
                }
                if let (Some(pos), true) = (r.gap_positions, s > 0) {
                    let prev = if r.reverse { row + 1 } else { row - 1 };
                    let gap = (pos[row] as f32 - pos[prev] as f32).abs().max(1.0) - 1.0;
                    let idle = if r.softplus { softplus(bias) } else { bias };
                    for (n, hn) in h.iter_mut().enumerate() {
                        *hn *= (gap * idle * r.a[e * n_n + n]).exp();
                    }
                }
                let mut y = 0.0;
                for (n, hn) in h.iter_mut().enumerate() {
                    *hn = (dt * r.a[e * n_n + n]).exp() * *hn + dt * r.b[row * n_n + n] * u;
                    y += r.c[row * n_n + n] * *hn;
                }
                y += r.d.map_or(0.0, |d| d[e]) * u;
                if let Some(z) = r.z {
                    y *= silu(z[row * e_n + e]);
                }
                out[row * e_n + e] = y;
            }
        }
    }
    out
}
