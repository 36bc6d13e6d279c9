//! Row-wise argmax (first maximum on ties), for greedy decoding on the GPU.

use crate::error::Result;
use crate::ops::kernel;
use crate::runtime::{grid, DType, Recorder, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

/// `x` `[rows, cols]` -> u32 `[rows]`: the first maximum of each row, or [`NO_INDEX`] where
/// the row holds NaN or an infinity (or no value above -3e38).
pub const NO_INDEX: u32 = u32::MAX;

/// See [`NO_INDEX`].
pub fn argmax(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let rows = x.numel() / cols.max(1);
    let out = rec.context().alloc("argmax", &[rows], DType::U32)?;
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad: [0; 2],
    };
    rec.dispatch(
        &kernel!("argmax", "argmax"),
        &params,
        &[x.buffer(), out.buffer()],
        grid(rows as u32),
    );
    Ok(out)
}

/// CPU reference.
pub fn argmax_ref(x: &[f32], cols: usize) -> Vec<u32> {
    x.chunks(cols)
        .map(|row| {
            if row.iter().any(|v| !v.is_finite()) {
                return NO_INDEX;
            }
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}
