//! PlainMamba's 2-D selective scan: four continuous snake ("zig-zag") scans over the token
//! grid in one dispatch, with the authors' quirks (only `u` permuted, a learned offset to `B`
//! per move direction, `D·u` inside every direction), summed and gated by `silu(z)`.

use crate::error::Result;
use crate::ops::scan::{selective_scan_ref, ScanRef, MAX_STATE};
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

/// The four scans of an `height x width` grid: `orders[k][s]` is the raster index visited at
/// step `s`, `directions[k][s]` the move that arrived there (`START` at step 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanOrders {
    pub height: usize,
    pub width: usize,
    pub orders: [Vec<u32>; 4],
    pub directions: [Vec<u32>; 4],
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
            orders,
            directions,
        }
    }

    /// The kernel's table: `[orders (4 x L) | directions (4 x L)]`.
    pub fn table(&self) -> Vec<u32> {
        self.orders
            .concat()
            .into_iter()
            .chain(self.directions.concat())
            .collect()
    }
}

/// The move into each step of `order` on a grid `width` wide.
fn moves(order: &[u32], width: usize) -> Vec<u32> {
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
    _pad: [u32; 3],
}

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
    /// [`ScanOrders::table`] of the grid, u32.
    pub orders: &'a Tensor,
    /// `[batch * len, channels]`: the gate.
    pub z: MatView<'a>,
    pub batch: usize,
}

/// Returns `(Σ_k y_k) * silu(z)` `[batch * len, channels]`, raster order.
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
    } = args;
    debug_assert!(std::ptr::eq(b.tensor.buffer(), c.tensor.buffer()) && b.stride == c.stride);
    let (channels, nstate, len) = (u.cols, b.cols, u.rows / batch);
    debug_assert!(nstate <= MAX_STATE && orders.numel() == 8 * len);
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
        _pad: [0; 3],
    };
    // The subgroup variant loads B and C as vec4s.
    let aligned =
        b.offset.is_multiple_of(4) && c.offset.is_multiple_of(4) && b.stride.is_multiple_of(4);
    let subgroups = rec.context().uses_subgroups() && aligned;
    rec.dispatch(
        &kernel!("zigzag_scan", "zigzag_scan").with_subgroups(subgroups),
        &p,
        &[
            u.buffer(),
            delta.buffer(),
            b.buffer(),
            params.buffer(),
            z.buffer(),
            orders.buffer(),
            direction_bs.buffer(),
            out.buffer(),
        ],
        [channels.div_ceil(64) as u32, batch as u32, 1],
    );
    Ok(out)
}

/// CPU reference, written as the authors' code runs it: for each direction, permute `u` into
/// scan order, add the direction offsets to `B` (raster order), run the Mamba-1 reference scan
/// and scatter its output back; then sum and gate. `inputs` are `[batch, len, ...]` as for
/// [`selective_scan_ref`], with `z` the gate (required) and `dt_bias` added inside the scan;
/// softplus is always applied. `direction_bs` is `[5, nstate]`.
pub fn zigzag_scan_ref(inputs: &ScanRef, direction_bs: &[f32], orders: &ScanOrders) -> Vec<f32> {
    let (len, e, n) = (inputs.len, inputs.channels, inputs.nstate);
    let z = inputs.z.expect("the zig-zag scan is gated");
    let mut sum = vec![0.0; inputs.u.len()];
    for (order, dirs) in orders.orders.iter().zip(&orders.directions) {
        // Row s of image b comes from row order[s] (scan order).
        let source = |s: usize| s / len * len + order[s % len] as usize;
        let rows = inputs.batch * len;
        let u: Vec<f32> = (0..rows)
            .flat_map(|s| &inputs.u[source(s) * e..][..e])
            .copied()
            .collect();
        let b: Vec<f32> = (0..rows)
            .flat_map(|s| {
                let offset = &direction_bs[dirs[s % len] as usize * n..][..n];
                inputs.b[s * n..][..n]
                    .iter()
                    .zip(offset)
                    .map(|(b, o)| b + o)
            })
            .collect();
        let scan = ScanRef {
            u: &u,
            b: &b,
            z: None,
            softplus: true,
            reverse: false,
            gap_positions: None,
            ..*inputs
        };
        let y = selective_scan_ref(&scan, &mut vec![0.0; inputs.batch * e * n]);
        for s in 0..rows {
            let dst = &mut sum[source(s) * e..][..e];
            dst.iter_mut()
                .zip(&y[s * e..][..e])
                .for_each(|(d, v)| *d += v);
        }
    }
    sum.iter().zip(z).map(|(y, z)| y * silu(*z)).collect()
}
