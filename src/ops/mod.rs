//! Ops: each is one WGSL file in `shaders/` and one launcher here, with a plain CPU reference
//! beside the launcher that the tests hold it to.

pub mod activation;
pub mod argmax;
pub mod conv1d;
pub mod dwconv2d;
pub mod embedding;
pub mod gated_rmsnorm;
pub mod gather_rows;
pub mod im2col;
pub mod importance;
pub mod kept_grid;
pub mod layernorm;
pub mod matmul;
pub mod rmsnorm;
pub mod scan;
pub mod ssd_scan;
pub mod token_reduce;
pub mod tokens;
pub mod topk;
pub mod zigzag_scan;

/// A kernel entry point of `shaders/<file>.wgsl`, embedded in the binary.
macro_rules! kernel {
    ($file:literal, $entry:literal) => {
        $crate::runtime::Kernel {
            entry: $entry,
            #[cfg(feature = "cuda")]
            cuda: include_str!(concat!("../../shaders/cuda/", $file, ".cu")),
            ..$crate::runtime::Kernel::file(
                $file,
                include_str!(concat!("../../shaders/", $file, ".wgsl")),
            )
        }
    };
}
pub(crate) use kernel;

/// Every shader source, for validation tests and tools.
pub const SHADERS: &[(&str, &str)] = &[
    ("argmax", include_str!("../../shaders/argmax.wgsl")),
    ("conv1d", include_str!("../../shaders/conv1d.wgsl")),
    ("dwconv2d", include_str!("../../shaders/dwconv2d.wgsl")),
    ("embedding", include_str!("../../shaders/embedding.wgsl")),
    (
        "gated_rmsnorm",
        include_str!("../../shaders/gated_rmsnorm.wgsl"),
    ),
    (
        "gather_rows",
        include_str!("../../shaders/gather_rows.wgsl"),
    ),
    ("im2col", include_str!("../../shaders/im2col.wgsl")),
    ("importance", include_str!("../../shaders/importance.wgsl")),
    ("kept_grid", include_str!("../../shaders/kept_grid.wgsl")),
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("rmsnorm", include_str!("../../shaders/rmsnorm.wgsl")),
    ("scan", include_str!("../../shaders/scan.wgsl")),
    ("ssd_scan", include_str!("../../shaders/ssd_scan.wgsl")),
    (
        "token_reduce",
        include_str!("../../shaders/token_reduce.wgsl"),
    ),
    ("tokens", include_str!("../../shaders/tokens.wgsl")),
    ("topk", include_str!("../../shaders/topk.wgsl")),
    (
        "zigzag_scan",
        include_str!("../../shaders/zigzag_scan.wgsl"),
    ),
];

/// Every CUDA C twin (`shaders/cuda/<file>.cu`), for compile checks.
#[cfg(feature = "cuda")]
pub const CUDA_SHADERS: &[(&str, &str)] = &[
    ("argmax", include_str!("../../shaders/cuda/argmax.cu")),
    ("conv1d", include_str!("../../shaders/cuda/conv1d.cu")),
    ("dwconv2d", include_str!("../../shaders/cuda/dwconv2d.cu")),
    ("embedding", include_str!("../../shaders/cuda/embedding.cu")),
    (
        "gated_rmsnorm",
        include_str!("../../shaders/cuda/gated_rmsnorm.cu"),
    ),
    (
        "gather_rows",
        include_str!("../../shaders/cuda/gather_rows.cu"),
    ),
    ("im2col", include_str!("../../shaders/cuda/im2col.cu")),
    (
        "importance",
        include_str!("../../shaders/cuda/importance.cu"),
    ),
    ("kept_grid", include_str!("../../shaders/cuda/kept_grid.cu")),
    ("layernorm", include_str!("../../shaders/cuda/layernorm.cu")),
    ("matmul", include_str!("../../shaders/cuda/matmul.cu")),
    ("rmsnorm", include_str!("../../shaders/cuda/rmsnorm.cu")),
    ("scan", include_str!("../../shaders/cuda/scan.cu")),
    ("ssd_scan", include_str!("../../shaders/cuda/ssd_scan.cu")),
    (
        "token_reduce",
        include_str!("../../shaders/cuda/token_reduce.cu"),
    ),
    ("tokens", include_str!("../../shaders/cuda/tokens.cu")),
    ("topk", include_str!("../../shaders/cuda/topk.cu")),
    (
        "zigzag_scan",
        include_str!("../../shaders/cuda/zigzag_scan.cu"),
    ),
];

/// A recurrent state carried across calls (conv window or SSM state), for generation.
#[derive(Clone, Copy)]
pub enum Carry<'a> {
    None,
    /// Start from zeros and store the final state (a prefill that will be continued).
    Capture(&'a crate::runtime::Tensor),
    /// Start from the state and store the new one (a decode step).
    Continue(&'a crate::runtime::Tensor),
}

impl Carry<'_> {
    /// The buffer to bind and the (read, write) flags.
    pub(crate) fn binding(
        self,
        rec: &crate::runtime::Recorder,
    ) -> (crate::runtime::Buffer, u32, u32) {
        match self {
            Carry::None => (rec.context().inner.dummy_rw.clone(), 0, 0),
            Carry::Capture(s) => (s.buffer().clone(), 0, 1),
            Carry::Continue(s) => (s.buffer().clone(), 1, 1),
        }
    }
}

pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// PyTorch's softplus (threshold 20).
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}
