//! Mamba-2's SSD scan (transformers `Mamba2Mixer.torch_forward`, mamba_ssm
//! `ssd_minimal_discrete`): the chunked form for prefill and the recurrent form for decoding,
//! both over heads of `headdim` channels with one scalar decay per head and B/C shared by the
//! heads of a group.

use crate::error::{Error, Result};
use crate::ops::{kernel, softplus, Carry};
use crate::runtime::{grid, Context, MatView, Recorder, Tensor};

/// Longest chunk the chunked kernels hold in workgroup memory; a longer configured chunk runs
/// as chunks of this size (the result is the same; only the work split changes).
pub const MAX_CHUNK: usize = 256;
/// Query rows per `ssd_chunk_out` workgroup, and state columns per `ssd_chunk_state` one.
const ROWS: usize = 8;
const NB: usize = 16;

const USE_STATE: u32 = 1;
const WRITE_STATE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    len: u32,
    heads: u32,
    headdim: u32,
    nstate: u32,
    groups: u32,
    chunk: u32,
    nchunks: u32,
    x_offset: u32,
    x_stride: u32,
    dt_offset: u32,
    dt_stride: u32,
    b_offset: u32,
    c_offset: u32,
    bc_stride: u32,
    flags: u32,
    dt_min: f32,
    dt_max: f32,
    _pad: [u32; 2],
}

/// Per-head parameters in the layout the kernels bind: `[A (heads) | D (heads) | dt_bias (heads)]`,
/// `A = -exp(A_log)`.
pub fn pack_ssd_params(a: &[f32], d: &[f32], dt_bias: &[f32]) -> Vec<f32> {
    [a, d, dt_bias].concat()
}

#[derive(Clone, Copy)]
pub struct SsdArgs<'a> {
    /// `[batch * len, heads * headdim]`: the (conv'd) input, head-major columns.
    pub x: MatView<'a>,
    /// `[batch * len, heads]`: dt before bias, softplus and clamp.
    pub dt: MatView<'a>,
    /// `[batch * len, groups * nstate]` each, with the same row stride.
    pub b: MatView<'a>,
    pub c: MatView<'a>,
    /// From [`pack_ssd_params`].
    pub params: &'a Tensor,
    pub heads: usize,
    pub groups: usize,
    pub batch: usize,
    /// Chunk length of the chunked form (capped at [`MAX_CHUNK`]).
    pub chunk: usize,
    /// `dt` is clamped to this range after softplus (transformers' `time_step_limit`).
    pub dt_limit: (f32, f32),
    /// `[batch, heads, headdim, nstate]`.
    pub state: Carry<'a>,
}

impl SsdArgs<'_> {
    fn params(&self, flags: u32, nchunks: usize) -> Result<Params> {
        let (heads, groups) = (self.heads, self.groups);
        if heads == 0 || groups == 0 || !heads.is_multiple_of(groups) {
            return Err(Error::InvalidInput(format!(
                "ssd_scan: {heads} heads do not split into {groups} groups"
            )));
        }
        if !self.b.cols.is_multiple_of(groups)
            || !self.x.cols.is_multiple_of(heads)
            || self.dt.cols != heads
        {
            return Err(Error::InvalidInput(format!(
                "ssd_scan: x {} / B {} / dt {} columns do not fit {heads} heads in {groups} groups",
                self.x.cols, self.b.cols, self.dt.cols
            )));
        }
        let len = self.x.rows / self.batch;
        // An infinite limit is stored as f32::MAX (clamp to it is the identity on finite dt).
        let finite = |v: f32| v.clamp(-f32::MAX, f32::MAX);
        Ok(Params {
            batch: self.batch as u32,
            len: len as u32,
            heads: heads as u32,
            headdim: (self.x.cols / heads) as u32,
            nstate: (self.b.cols / groups) as u32,
            groups: groups as u32,
            chunk: self.chunk.clamp(1, MAX_CHUNK) as u32,
            nchunks: nchunks as u32,
            x_offset: self.x.offset as u32,
            x_stride: self.x.stride as u32,
            dt_offset: self.dt.offset as u32,
            dt_stride: self.dt.stride as u32,
            b_offset: self.b.offset as u32,
            c_offset: self.c.offset as u32,
            bc_stride: self.b.stride as u32,
            flags,
            dt_min: finite(self.dt_limit.0),
            dt_max: finite(self.dt_limit.1),
            _pad: [0; 2],
        })
    }
}

/// The recurrent form, token by token (decode steps). Returns `y` `[batch * len, heads * headdim]`.
pub fn ssd_recurrent(rec: &mut Recorder, args: SsdArgs) -> Result<Tensor> {
    debug_assert_eq!(args.b.stride, args.c.stride);
    // The kernel keeps the state in the state buffer; without a carry it uses a scratch one.
    let scratch;
    let (state, use_state) = match args.state {
        Carry::Continue(s) => (s, USE_STATE),
        Carry::Capture(s) => (s, 0),
        Carry::None => {
            let p = args.params(0, 1)?;
            scratch = rec.alloc(
                "ssd_state",
                &[
                    args.batch,
                    args.heads,
                    p.headdim as usize,
                    p.nstate as usize,
                ],
            )?;
            (&scratch, 0)
        }
    };
    let p = args.params(use_state, 1)?;
    let y = rec.alloc("ssd_out", &[args.x.rows, args.x.cols])?;
    rec.dispatch(
        &kernel!("ssd_scan", "ssd_step"),
        &p,
        &[
            args.x.buffer(),
            args.dt.buffer(),
            args.b.buffer(),
            args.c.buffer(),
            args.params.buffer(),
            state.buffer(),
            y.buffer(),
        ],
        grid((args.batch * args.x.cols).div_ceil(64) as u32),
    );
    Ok(y)
}

/// The chunked form (prefill): three dispatches, see `shaders/ssd_scan.wgsl`. Returns `y`
/// `[batch * len, heads * headdim]`.
pub fn ssd_chunked(rec: &mut Recorder, args: SsdArgs) -> Result<Tensor> {
    debug_assert_eq!(args.b.stride, args.c.stride);
    let len = args.x.rows / args.batch;
    let chunk = args.chunk.clamp(1, MAX_CHUNK);
    let nchunks = len.div_ceil(chunk);
    let (state_buf, read, write) = args.state.binding(rec);
    let flags = if read != 0 { USE_STATE } else { 0 } | if write != 0 { WRITE_STATE } else { 0 };
    let p = args.params(flags, nchunks)?;
    let (heads, batch) = (args.heads, args.batch);
    let (headdim, nstate) = (p.headdim as usize, p.nstate as usize);
    let totals = rec.alloc("ssd_chunk_decay", &[batch, heads, nchunks])?;
    let states = rec.alloc(
        "ssd_chunk_states",
        &[batch, heads, nchunks, headdim, nstate],
    )?;
    rec.dispatch(
        &kernel!("ssd_scan", "ssd_chunk_state"),
        &p,
        &[
            args.x.buffer(),
            args.dt.buffer(),
            args.b.buffer(),
            totals.buffer(),
            args.params.buffer(),
            states.buffer(),
        ],
        [
            nstate.div_ceil(NB) as u32,
            nchunks as u32,
            (batch * heads) as u32,
        ],
    );
    rec.dispatch(
        &kernel!("ssd_scan", "ssd_state_pass"),
        &p,
        &[totals.buffer(), states.buffer(), &state_buf],
        [
            (headdim * nstate).div_ceil(64) as u32,
            heads as u32,
            batch as u32,
        ],
    );
    let y = rec.alloc("ssd_out", &[args.x.rows, args.x.cols])?;
    rec.dispatch(
        &kernel!("ssd_scan", "ssd_chunk_out"),
        &p,
        &[
            args.x.buffer(),
            args.dt.buffer(),
            args.b.buffer(),
            args.c.buffer(),
            args.params.buffer(),
            states.buffer(),
            y.buffer(),
        ],
        [
            (nchunks * chunk.div_ceil(ROWS)) as u32,
            heads as u32,
            batch as u32,
        ],
    );
    Ok(y)
}

/// Dense host inputs for [`ssd_scan_ref`], token-major like the kernels.
pub struct SsdRef<'a> {
    pub batch: usize,
    pub len: usize,
    pub heads: usize,
    pub headdim: usize,
    pub groups: usize,
    pub nstate: usize,
    /// `[batch, len, heads * headdim]`
    pub x: &'a [f32],
    /// `[batch, len, heads]`
    pub dt: &'a [f32],
    /// `[batch, len, groups * nstate]`
    pub b: &'a [f32],
    pub c: &'a [f32],
    /// `[heads]` each; `a` negative.
    pub a: &'a [f32],
    pub d: &'a [f32],
    pub dt_bias: &'a [f32],
    pub dt_limit: (f32, f32),
}

/// [`SsdRef`]'s inputs on the GPU (B and C side by side in one `[rows, 2 * groups * nstate]`
/// tensor, as the model's conv output holds them after x).
pub struct SsdTensors {
    x: Tensor,
    dt: Tensor,
    bc: Tensor,
    params: Tensor,
    heads: usize,
    groups: usize,
    batch: usize,
    gn: usize,
    dt_limit: (f32, f32),
}

impl SsdRef<'_> {
    pub fn upload(&self, ctx: &Context) -> Result<SsdTensors> {
        let rows = self.batch * self.len;
        let gn = self.groups * self.nstate;
        let bc: Vec<f32> = self
            .b
            .chunks(gn)
            .zip(self.c.chunks(gn))
            .flat_map(|(b, c)| [b, c].concat())
            .collect();
        let params = pack_ssd_params(self.a, self.d, self.dt_bias);
        Ok(SsdTensors {
            x: ctx.upload_f32("x", &[rows, self.heads * self.headdim], self.x)?,
            dt: ctx.upload_f32("dt", &[rows, self.heads], self.dt)?,
            bc: ctx.upload_f32("bc", &[rows, 2 * gn], &bc)?,
            params: ctx.upload_f32("ssd_params", &[params.len()], &params)?,
            heads: self.heads,
            groups: self.groups,
            batch: self.batch,
            gn,
            dt_limit: self.dt_limit,
        })
    }
}

impl SsdTensors {
    pub fn args<'a>(&'a self, chunk: usize, state: Carry<'a>) -> SsdArgs<'a> {
        SsdArgs {
            x: self.x.mat(),
            dt: self.dt.mat(),
            b: self.bc.cols(0, self.gn),
            c: self.bc.cols(self.gn, self.gn),
            params: &self.params,
            heads: self.heads,
            groups: self.groups,
            batch: self.batch,
            chunk,
            dt_limit: self.dt_limit,
            state,
        }
    }
}

/// CPU reference: the recurrence token by token. `state` (`[batch, heads, headdim, nstate]`) is
/// the initial state and receives the final one. Returns `y` `[batch, len, heads * headdim]`.
pub fn ssd_scan_ref(r: &SsdRef, state: &mut [f32]) -> Vec<f32> {
    let (l, hn, pn, nn) = (r.len, r.heads, r.headdim, r.nstate);
    let gn = r.groups * nn;
    let mut out = vec![0.0; r.batch * l * hn * pn];
    for b in 0..r.batch {
        for h in 0..hn {
            let g = h / (hn / r.groups);
            for t in 0..l {
                let row = b * l + t;
                let dt =
                    softplus(r.dt[row * hn + h] + r.dt_bias[h]).clamp(r.dt_limit.0, r.dt_limit.1);
                let decay = (dt * r.a[h]).exp();
                let bv = &r.b[row * gn + g * nn..][..nn];
                let cv = &r.c[row * gn + g * nn..][..nn];
                for p in 0..pn {
                    let xv = r.x[row * hn * pn + h * pn + p];
                    let s = &mut state[((b * hn + h) * pn + p) * nn..][..nn];
                    let mut y = 0.0;
                    for n in 0..nn {
                        s[n] = decay * s[n] + dt * xv * bv[n];
                        y += cv[n] * s[n];
                    }
                    out[row * hn * pn + h * pn + p] = y + r.d[h] * xv;
                }
            }
        }
    }
    out
}
