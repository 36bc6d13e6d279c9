//! PlainMamba's 2-D selective scan: four continuous snake ("zig-zag") scans over the token
//! grid in one dispatch, with the authors' quirks (only `u` permuted, a learned offset to `B`
//! per move direction, `D·u` inside every direction), summed and gated by `silu(z)`.

use crate::error::Result;
use crate::ops::scan::{selective_scan_ref, ScanRef, Ungated, MAX_STATE};
use crate::ops::{kernel, silu};
use crate::runtime::{MatView, Recorder, Tensor};

/// Move codes of [`ScanOrders::directions`], the authors' `[start, right, left, up, down]`;
/// they index the rows of `direction_Bs`.
pub const START: u32 = 0;
pub const RIGHT: u32 = 1;
pub const LEFT: u32 = 2;
pub const UP: u32 = 3;
pub const DOWN: u32 = 4;
/// Rows of `direction_Bs`.
pub const DIRECTIONS: usize = 5;

/// The four scans of the tokens of an `height x width` grid: `orders[k][s]` is the token
/// visited at step `s` (its raster index on the whole grid; its index in the compacted sequence
/// once tokens are pruned, see [`crate::ops::kept_grid`]), `directions[k][s]` the move that
/// arrived there (`START` at step 0), `gaps[k][s]` how many pruned tokens the scan skipped
/// just before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOrders {
    pub height: usize,
    pub width: usize,
    pub orders: [Vec<u32>; 4],
    pub directions: [Vec<u32>; 4],
    pub gaps: [Vec<u32>; 4],
}

impl ScanOrders {
    pub fn new(height: usize, width: usize) -> Self {
        let (h, w) = (height, width);
        // Row snake from (0, 0): even rows left to right, odd rows back, stepping down.
        let rows: Vec<u32> = (0..h)
            .flat_map(|i| (0..w).map(move |j| i * w + if i % 2 == 0 { j } else { w - 1 - j }))
            .map(|v| v as u32)
            .collect();
        // Column snake from (0, 0): even columns downwards, odd columns back up, stepping right.
        let cols: Vec<u32> = (0..w)
            .flat_map(|j| (0..h).map(move |i| j + w * if j % 2 == 0 { i } else { h - 1 - i }))
            .map(|v| v as u32)
            .collect();
        // The authors start scans 2 and 4 in the bottom row / last column, at the corner chosen
        // by the parity of H / W: that is where scans 1 and 3 end, and the rules then retrace
        // them backwards.
        let reversed = |v: &[u32]| v.iter().rev().copied().collect::<Vec<u32>>();
        let orders = [rows.clone(), reversed(&rows), cols.clone(), reversed(&cols)];
        let directions = orders.clone().map(|o| moves(&o, w));
        ScanOrders {
            height,
            width,
            gaps: orders.clone().map(|o| vec![0; o.len()]),
            orders,
            directions,
        }
    }

    /// Tokens per scan.
    pub fn len(&self) -> usize {
        self.orders[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kernel's table: `[orders (4 x N) | directions (4 x N) | gaps (4 x N)]`.
    pub fn table(&self) -> Vec<u32> {
        [&self.orders, &self.directions, &self.gaps]
            .into_iter()
            .flat_map(|t| t.concat())
            .collect()
    }
}

/// The move into each step of `order` (raster indices on a grid `width` wide); between tokens
/// that are not neighbours, the one the snakes make: along the row when the row is the same,
/// else up or down.
pub fn moves(order: &[u32], width: usize) -> Vec<u32> {
    let w = width as u32;
    let steps = order.windows(2).map(|p| {
        let ((r0, c0), (r1, c1)) = ((p[0] / w, p[0] % w), (p[1] / w, p[1] % w));
        match (r0 == r1, c1 > c0, r1 > r0) {
            (true, true, _) => RIGHT,
            (true, false, _) => LEFT,
            (false, _, true) => DOWN,
            (false, _, false) => UP,
        }
    });
    std::iter::once(START).chain(steps).collect()
}

/// `direction_Bs` `[5, nstate]` as the kernel binds it: `[5, 16]`, zero past `nstate`.
pub fn pack_direction_bs(direction_bs: &[f32], nstate: usize) -> Vec<f32> {
    debug_assert!(nstate <= MAX_STATE && direction_bs.len() == DIRECTIONS * nstate);
    direction_bs
        .chunks(nstate)
        .flat_map(|row| {
            let mut padded = [0.0; MAX_STATE];
            padded[..nstate].copy_from_slice(row);
            padded
        })
        .collect()
}

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
    table_stride: u32,
    flags: u32,
    _pad: u32,
}

/// Kernel flags.
const DECAY: u32 = 1;
const UNGATED: u32 = 2;
const UNGATED_CLIP: u32 = 4;
const UNGATED_ADD: u32 = 8;

pub struct ZigzagArgs<'a> {
    /// `[batch * len, channels]`, raster order: the conv'd input.
    pub u: MatView<'a>,
    /// `[batch * len, channels]`: dt before `dt_bias` and softplus.
    pub delta: MatView<'a>,
    /// `[batch * len, nstate]` each; B and C must be column slices of one tensor.
    pub b: MatView<'a>,
    pub c: MatView<'a>,
    /// From [`crate::ops::scan::pack_ssm_params`]: `A` (negative), `D`, `dt_bias`.
    pub params: &'a Tensor,
    /// From [`pack_direction_bs`].
    pub direction_bs: &'a Tensor,
    /// u32 [`ScanOrders::table`]: of the whole grid, shared by every image (`[12 len]`), or of
    /// each image's kept tokens (`[batch, 12 len]`, from [`crate::ops::kept_grid`]).
    pub orders: &'a Tensor,
    /// `[batch * len, channels]`: the gate.
    pub z: MatView<'a>,
    pub batch: usize,
    /// Before each step, decay the state over the pruned tokens the scan skipped
    /// ([`ScanOrders::gaps`]) as zero-input tokens would: `delta = softplus(2 dt_bias)`, the
    /// dt bias being added twice in this model.
    pub decay: bool,
    /// Also store `Σ_k y_k` before the gate (each `y_k` clipped at zero with `clip`), for
    /// pruning's importance scores.
    pub ungated: Option<Ungated<'a>>,
}

/// Returns `(Σ_k y_k) * silu(z)` `[batch * len, channels]`: token `t` of each image is row `t`
/// of its sequence (raster order on the whole grid).
pub fn zigzag_scan(rec: &mut Recorder, args: ZigzagArgs) -> Result<Tensor> {
    let ZigzagArgs {
        u,
        delta,
        b,
        c,
        params,
        direction_bs,
        orders,
        z,
        batch,
        decay,
        ungated,
    } = args;
    debug_assert!(std::ptr::eq(b.tensor.buffer(), c.tensor.buffer()) && b.stride == c.stride);
    let (channels, nstate, len) = (u.cols, b.cols, u.rows / batch);
    let table = 12 * len;
    debug_assert!(nstate <= MAX_STATE && [table, batch * table].contains(&orders.numel()));
    let flags = if decay { DECAY } else { 0 }
        | ungated.map_or(0, |g| {
            UNGATED | if g.clip { UNGATED_CLIP } else { 0 } | if g.add { UNGATED_ADD } else { 0 }
        });
    let out = rec.alloc("zigzag_out", &[u.rows, channels])?;
    let p = Params {
        batch: batch as u32,
        len: len as u32,
        channels: channels as u32,
        nstate: nstate as u32,
        u_offset: u.offset as u32,
        u_stride: u.stride as u32,
        dt_offset: delta.offset as u32,
        dt_stride: delta.stride as u32,
        b_offset: b.offset as u32,
        c_offset: c.offset as u32,
        bc_stride: b.stride as u32,
        z_offset: z.offset as u32,
        z_stride: z.stride as u32,
        table_stride: if orders.numel() == table {
            0
        } else {
            table as u32
        },
        flags,
        _pad: 0,
    };
    let ungated_buf = ungated.map_or_else(
        || rec.context().inner.dummy_rw.clone(),
        |g| g.tensor.buffer().clone(),
    );
    // The subgroup variant loads B and C as vec4s.
    let aligned =
        b.offset.is_multiple_of(4) && c.offset.is_multiple_of(4) && b.stride.is_multiple_of(4);
    let subgroups = rec.context().uses_subgroups() && aligned;
    let buffers = [
        u.buffer(),
        delta.buffer(),
        b.buffer(),
        params.buffer(),
        z.buffer(),
        orders.buffer(),
        direction_bs.buffer(),
        out.buffer(),
        &ungated_buf,
    ];
    #[cfg(feature = "cuda")]
    if rec.context().cuda().is_some() && len >= crate::ops::scan::CUDA_CHUNKED_MIN_LEN {
        // One block per (channel, image), parallel over the steps (shaders/cuda/zigzag_scan.cu).
        let kernel = kernel!("zigzag_scan", "zigzag_scan_chunked");
        rec.dispatch(&kernel, &p, &buffers, [channels as u32, batch as u32, 1]);
        return Ok(out);
    }
    rec.dispatch(
        &kernel!("zigzag_scan", "zigzag_scan").with_subgroups(subgroups),
        &p,
        &buffers,
        [channels.div_ceil(64) as u32, batch as u32, 1],
    );
    Ok(out)
}

/// What [`zigzag_scan_ref`] computes: the gated output and the ungated sum.
pub struct ZigzagRef {
    pub out: Vec<f32>,
    /// `Σ_k y_k`, each `y_k` clipped at zero when asked.
    pub ungated: Vec<f32>,
}

/// CPU reference, written as the authors' code runs it: for each image and direction, permute
/// `u` into scan order, add the direction offsets to `B` (sequence order), run the Mamba-1
/// reference scan and scatter its output back; then sum and gate. `inputs` are
/// `[batch, len, ...]` as for [`selective_scan_ref`], with `z` the gate (required) and
/// `dt_bias` added inside the scan; softplus is always applied. `direction_bs` is
/// `[5, nstate]`; `orders` holds each image's scans. With `decay`, the Mamba-1 reference's
/// gap decay runs on each visited token's step in the unpruned scan.
pub fn zigzag_scan_ref(
    inputs: &ScanRef,
    direction_bs: &[f32],
    orders: &[ScanOrders],
    decay: bool,
    clip: bool,
) -> ZigzagRef {
    let (len, e, n) = (inputs.len, inputs.channels, inputs.nstate);
    let z = inputs.z.expect("the zig-zag scan is gated");
    let dt_bias = inputs.dt_bias.expect("the zig-zag scan has a dt bias");
    let mut sum = vec![0.0; inputs.u.len()];
    let mut ungated = vec![0.0; inputs.u.len()];
    // A pruned token's delta before the bias is the dt bias itself (dt_proj of zero), so its
    // delta is softplus(2 dt_bias): the reference's gap decay, which uses softplus(bias), gets
    // twice the bias with it taken off delta.
    let twice_bias: Vec<f32> = dt_bias.iter().map(|b| 2.0 * b).collect();
    let image = |x: &'_ [f32], b: usize, width: usize| x[b * len * width..][..len * width].to_vec();
    for (img, scans) in orders.iter().enumerate().take(inputs.batch) {
        let (u_img, delta) = (image(inputs.u, img, e), image(inputs.delta, img, e));
        let less_bias: Vec<f32> = delta
            .iter()
            .enumerate()
            .map(|(i, d)| d - dt_bias[i % e])
            .collect();
        for k in 0..4 {
            let (order, dirs, gaps) = (&scans.orders[k], &scans.directions[k], &scans.gaps[k]);
            let u: Vec<f32> = order
                .iter()
                .flat_map(|&t| &u_img[t as usize * e..][..e])
                .copied()
                .collect();
            let b: Vec<f32> = (0..len)
                .flat_map(|s| {
                    let offset = &direction_bs[dirs[s] as usize * n..][..n];
                    inputs.b[(img * len + s) * n..][..n]
                        .iter()
                        .zip(offset)
                        .map(|(b, o)| b + o)
                        .collect::<Vec<_>>()
                })
                .collect();
            let steps: Vec<u32> = gaps
                .iter()
                .scan(0u32, |step, g| {
                    *step += g;
                    let at = *step;
                    *step += 1;
                    Some(at)
                })
                .collect();
            let c = image(inputs.c, img, n);
            let scan = ScanRef {
                batch: 1,
                u: &u,
                b: &b,
                c: &c,
                delta: if decay { &less_bias } else { &delta },
                dt_bias: Some(if decay { &twice_bias } else { dt_bias }),
                z: None,
                softplus: true,
                reverse: false,
                gap_positions: decay.then_some(&steps[..]),
                ..*inputs
            };
            let y = selective_scan_ref(&scan, &mut vec![0.0; e * n]);
            for (s, &t) in order.iter().enumerate() {
                let row = (img * len + t as usize) * e;
                for ch in 0..e {
                    let v = y[s * e + ch];
                    sum[row + ch] += v;
                    ungated[row + ch] += if clip { v.max(0.0) } else { v };
                }
            }
        }
    }
    let out = sum.iter().zip(z).map(|(y, z)| y * silu(*z)).collect();
    ZigzagRef { out, ungated }
}
