//! Linear layer: `y = x · wᵀ (+ bias)` with the PyTorch `[out, in]` weight layout, with an
//! optional epilogue (activation, residual add) applied before the store.

use crate::error::Result;
use crate::ops::activation::Activation;
use crate::ops::kernel;
use crate::runtime::{MatView, Recorder, Tensor};

/// Fewer rows than this use the 4-row subgroup kernel: the 20-row tile would spend most of its
/// multiply-adds on rows past m (lavapipe, n = 1536, k = 384: at 4 rows 0.37-0.59 ms against
/// the 16-row tile's 0.60-0.65; at 8 rows the 20-row tile takes 0.50-0.52 ms against 0.61-0.63,
/// at 12 rows 0.50 against 0.87-0.91).
const SUBGROUP_TILE_MIN_ROWS: usize = 8;

/// The subgroup tile's rows (`TILE_ROWS` in shaders/matmul.wgsl).
const TILE_ROWS: usize = 20;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    x_offset: u32,
    x_stride: u32,
    y_offset: u32,
    y_stride: u32,
    x_group: u32,
    y_group: u32,
    _pad: [u32; 2],
}

/// The kernel's `FLAGS`: the epilogue's options, as pipeline constants.
const HAS_BIAS: u32 = 1;
const HAS_RESIDUAL: u32 = 2;
const ACTIVATION_SHIFT: u32 = 2;
/// Group offsets from the grid's z ([`matmul_grouped`]).
const GROUPED: u32 = 16;

/// Applied to each output, in this order: `+ bias`, the activation, `+ residual`.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a Tensor>,
    pub activation: Activation,
    /// `[m, n]`: a residual connection `y = r + f(x)`.
    pub residual: Option<&'a Tensor>,
}

/// `x` is `[m, k]` (any row stride), `w` is `[n, k]`, `bias` is `[n]`; returns `[m, n]`.
pub fn matmul(
    rec: &mut Recorder,
    name: &str,
    x: MatView,
    w: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let epilogue = Epilogue {
        bias,
        ..Epilogue::default()
    };
    matmul_with(rec, name, x, w, epilogue)
}

/// [`matmul`] with an [`Epilogue`] fused into the store.
pub fn matmul_with(
    rec: &mut Recorder,
    name: &str,
    x: MatView,
    w: &Tensor,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let y = rec.alloc(name, &[x.rows, w.shape()[0]])?;
    record(rec, x, w, epilogue, &y, 0, 1);
    Ok(y)
}

/// `groups` matmuls in one dispatch: `x` holds `groups` blocks of rows, `w` is `[groups, n,
/// k]`; block g of the result `[groups · m, n]` is block g of x times `w[g]ᵀ` (the same
/// projection of several directions).
pub fn matmul_grouped(
    rec: &mut Recorder,
    name: &str,
    x: MatView,
    w: &Tensor,
    groups: usize,
) -> Result<Tensor> {
    let (n, k) = (w.shape()[1], w.shape()[2]);
    debug_assert_eq!(w.shape(), [groups, n, k]);
    let y = rec.alloc(name, &[x.rows, n])?;
    record(rec, x, w, Epilogue::default(), &y, 0, groups);
    Ok(y)
}

/// [`matmul`] into columns `first_col..first_col + n` of `y` `[m, width]`: a head whose
/// weight is split by rows ([`crate::runtime::RowShards`]) fills its logits shard by shard.
pub fn matmul_into_columns(
    rec: &mut Recorder,
    x: MatView,
    w: &Tensor,
    y: &Tensor,
    first_col: usize,
) {
    record(rec, x, w, Epilogue::default(), y, first_col, 1);
}

/// Record `y[:, first_col..][..n] = epilogue(x · wᵀ)`; `y` is `[m, width]`; with `groups`
/// above 1, as [`matmul_grouped`] (no epilogue).
fn record(
    rec: &mut Recorder,
    x: MatView,
    w: &Tensor,
    epilogue: Epilogue,
    y: &Tensor,
    first_col: usize,
    groups: usize,
) {
    let Epilogue {
        bias,
        activation,
        residual,
    } = epilogue;
    let (m, k) = (x.rows / groups, x.cols);
    let n = w.numel() / (groups * k).max(1);
    let width = y.numel() / x.rows.max(1);
    debug_assert!(first_col + n <= width && residual.is_none_or(|_| width == n));
    debug_assert!(
        groups == 1 || (bias.is_none() && residual.is_none() && activation == Activation::None)
    );
    #[cfg(feature = "cuda")]
    if record_cublas(rec, x, w, epilogue, y, first_col, groups) {
        return;
    }
    let (x_group, y_group) = (m * x.stride, m * width);
    let vec4 = k % 4 == 0
        && [x.stride, x.offset, x_group]
            .iter()
            .all(|v| v.is_multiple_of(4));
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        x_offset: x.offset as u32,
        x_stride: x.stride as u32,
        y_offset: first_col as u32,
        y_stride: width as u32,
        x_group: x_group as u32,
        y_group: y_group as u32,
        _pad: [0; 2],
    };
    let flags = if bias.is_some() { HAS_BIAS } else { 0 }
        | if residual.is_some() { HAS_RESIDUAL } else { 0 }
        | activation.code() << ACTIVATION_SHIFT
        | if groups > 1 { GROUPED } else { 0 };
    debug_assert!(residual.is_none_or(|r| r.numel() == m * n));
    let subgroups = vec4 && rec.context().uses_subgroups();
    let (kernel, groups) = if subgroups && m >= SUBGROUP_TILE_MIN_ROWS {
        // 8 invocations x 8 columns, 20 rows per workgroup; 8-value loads where they line up.
        let int64 = rec.context().uses_int64()
            && k % 8 == 0
            && [x.stride, x.offset, x_group]
                .iter()
                .all(|v| v.is_multiple_of(8));
        // ... and 8-value stores where y's rows line up too.
        let k = if int64
            && [n, first_col, width, y_group]
                .iter()
                .all(|v| v.is_multiple_of(8))
        {
            kernel!("matmul", "matmul_subgroup_wide")
        } else {
            kernel!("matmul", "matmul_subgroup")
        };
        let k = k.with_subgroups(true).with_int64(int64);
        (
            k,
            [
                n.div_ceil(64) as u32,
                m.div_ceil(TILE_ROWS) as u32,
                groups as u32,
            ],
        )
    } else if subgroups {
        // 64 invocations x 4 columns, 4 rows per workgroup.
        let k = kernel!("matmul", "matmul_subgroup_rows4").with_subgroups(true);
        (
            k,
            [n.div_ceil(256) as u32, m.div_ceil(4) as u32, groups as u32],
        )
    } else {
        // 8 x 8 invocations of 8 rows x 4 columns: 64 x 32 outputs per workgroup.
        let k = if vec4 {
            kernel!("matmul", "matmul_vec4")
        } else {
            kernel!("matmul", "matmul_scalar")
        };
        (
            k,
            [n.div_ceil(32) as u32, m.div_ceil(64) as u32, groups as u32],
        )
    };
    let dummy = rec.context().inner.dummy.clone();
    let bias_buf = bias.map(Tensor::buffer).unwrap_or(&dummy);
    let residual_buf = residual.map(Tensor::buffer).unwrap_or(&dummy);
    rec.dispatch(
        &kernel.with_flags(flags),
        &params,
        &[x.buffer(), w.buffer(), bias_buf, y.buffer(), residual_buf],
        groups,
    );
}

/// The epilogue's parameters on the CUDA backend (`shaders/cuda/matmul.cu`).
#[cfg(feature = "cuda")]
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EpilogueParams {
    m: u32,
    n: u32,
    y_offset: u32,
    y_stride: u32,
    has_bias: u32,
    activation: u32,
    has_residual: u32,
    _pad: u32,
}

/// On the CUDA backend: the product on cuBLAS, then the epilogue kernel where there is one.
/// False on wgpu.
#[cfg(feature = "cuda")]
fn record_cublas(
    rec: &mut Recorder,
    x: MatView,
    w: &Tensor,
    epilogue: Epilogue,
    y: &Tensor,
    first_col: usize,
    groups: usize,
) -> bool {
    let (m, k) = (x.rows / groups, x.cols);
    let n = w.numel() / (groups * k).max(1);
    let width = y.numel() / x.rows.max(1);
    // One gemm per group.
    for g in 0..groups {
        let gemm = crate::runtime::cuda::Gemm {
            x: x.buffer(),
            x_offset: x.offset + g * m * x.stride,
            x_stride: x.stride,
            w: w.buffer(),
            w_offset: g * n * k,
            y: y.buffer(),
            y_offset: first_col + g * m * width,
            y_stride: width,
            m,
            n,
            k,
        };
        if !rec.cublas_gemm(gemm) {
            return false;
        }
    }
    let Epilogue {
        bias,
        activation,
        residual,
    } = epilogue;
    if bias.is_none() && residual.is_none() && activation == Activation::None {
        return true;
    }
    let params = EpilogueParams {
        m: m as u32,
        n: n as u32,
        y_offset: first_col as u32,
        y_stride: width as u32,
        has_bias: bias.is_some() as u32,
        activation: activation.code(),
        has_residual: residual.is_some() as u32,
        _pad: 0,
    };
    let dummy = rec.context().inner.dummy.clone();
    let bias_buf = bias.map(Tensor::buffer).unwrap_or(&dummy);
    let residual_buf = residual.map(Tensor::buffer).unwrap_or(&dummy);
    rec.dispatch(
        &kernel!("matmul", "matmul_epilogue"),
        &params,
        &[bias_buf, y.buffer(), residual_buf],
        crate::runtime::grid((m * n).div_ceil(256) as u32),
    );
    true
}

#[allow(clippy::too_many_arguments)] // mirrors the kernel's inputs one for one
/// CPU reference of [`matmul_with`]: `x` `[m, k]` dense, `w` `[n, k]`, `residual` `[m, n]`.
pub fn matmul_with_ref(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    activation: Activation,
    residual: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = matmul_ref(x, m, k, w, n, bias);
    for (i, v) in y.iter_mut().enumerate() {
        *v = activation.apply(*v) + residual.map_or(0.0, |r| r[i]);
    }
    y
}

/// CPU reference: `x` `[m, k]` dense, `w` `[n, k]`.
pub fn matmul_ref(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let dot: f32 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
            y[i * n + j] = dot + bias.map_or(0.0, |b| b[j]);
        }
    }
    y
}
