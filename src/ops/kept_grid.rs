//! The token grid after pruning: which cell each kept token sits in, and the four PlainMamba
//! scans over the kept tokens (see `shaders/kept_grid.wgsl`), built on the GPU from the
//! position map so that a pruned forward pass never reads back.

use crate::error::Result;
use crate::ops::kernel;
use crate::ops::zigzag_scan::{moves, ScanOrders, START};
use crate::runtime::{grid, DType, Recorder, Tensor};

/// Marks a pruned cell in [`KeptGrid::slots`].
pub const NONE: u32 = u32::MAX;

/// How the scans visit the kept tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Each scan in its own order over the grid, skipping pruned cells.
    Grid,
    /// The token sequence forwards (scans 0 and 2) and backwards (1 and 3), as a model that
    /// knows only the sequence would: the `score` baseline.
    Sequence,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    keep: u32,
    width: u32,
    flags: u32,
}

/// What [`kept_grid`] builds, all u32.
pub struct KeptGrid {
    /// `[batch, H·W]`: the sequence index of the token in each cell, or [`NONE`].
    pub slots: Tensor,
    /// `[batch, 12 keep]`: each image's [`ScanOrders::table`] over its kept tokens.
    pub tables: Tensor,
}

/// `positions` u32 `[batch, keep]` (distinct raster indices), `scans` the u32
/// [`ScanOrders::table`] of the whole `height x width` grid.
pub fn kept_grid(
    rec: &mut Recorder,
    positions: &Tensor,
    (height, width): (usize, usize),
    scans: &Tensor,
    walk: Walk,
) -> Result<KeptGrid> {
    let (batch, keep) = (positions.shape()[0], positions.shape()[1]);
    let len = height * width;
    debug_assert!(keep <= len && scans.numel() == 12 * len);
    let ctx = rec.context();
    let slots = ctx.alloc("slots", &[batch, len], DType::U32)?;
    let tables = ctx.alloc("scan_tables", &[batch, 12 * keep], DType::U32)?;
    let params = Params {
        len: len as u32,
        keep: keep as u32,
        width: width as u32,
        flags: (walk == Walk::Sequence) as u32,
    };
    rec.dispatch(
        &kernel!("kept_grid", "kept_grid"),
        &params,
        &[
            positions.buffer(),
            scans.buffer(),
            slots.buffer(),
            tables.buffer(),
        ],
        grid(batch as u32),
    );
    Ok(KeptGrid { slots, tables })
}

/// CPU reference for one image: its slot map and scans, from the definitions (the unpruned
/// scans with the pruned cells left out).
pub fn kept_grid_ref(positions: &[u32], orders: &ScanOrders, walk: Walk) -> (Vec<u32>, ScanOrders) {
    let mut slots = vec![NONE; orders.height * orders.width];
    for (i, &pos) in positions.iter().enumerate() {
        slots[pos as usize] = i as u32;
    }
    let mut kept = orders.clone();
    for k in 0..4 {
        let (order, dirs, gaps) = match walk {
            Walk::Grid => {
                let steps: Vec<usize> = (0..orders.len())
                    .filter(|&r| slots[orders.orders[k][r] as usize] != NONE)
                    .collect();
                let gaps = std::iter::once(0)
                    .chain(steps.windows(2).map(|w| (w[1] - w[0] - 1) as u32))
                    .take(steps.len())
                    .collect();
                (
                    steps
                        .iter()
                        .map(|&r| slots[orders.orders[k][r] as usize])
                        .collect(),
                    steps.iter().map(|&r| orders.directions[k][r]).collect(),
                    gaps,
                )
            }
            Walk::Sequence => {
                let mut order: Vec<u32> = (0..positions.len() as u32).collect();
                if k % 2 == 1 {
                    order.reverse();
                }
                let visited: Vec<u32> = order.iter().map(|&i| positions[i as usize]).collect();
                let dirs = moves(&visited, orders.width);
                debug_assert!(dirs.first().is_none_or(|&d| d == START));
                (order, dirs, vec![0; positions.len()])
            }
        };
        (kept.orders[k], kept.directions[k], kept.gaps[k]) = (order, dirs, gaps);
    }
    (slots, kept)
}
