#!/usr/bin/env python3
"""PyTorch reference timings for the shapes that `ssmgpu bench` times.

1. Selective scan (mamba_ssm `selective_scan_ref` semantics):
   batch 1, 1536 channels, 1024 tokens, state 16, and Vim-Ti's 384 channels over 197 tokens,
   with D, z, delta_bias and delta_softplus=True. With `--device cuda` also mamba_ssm's CUDA
   kernel (`selective_scan_fn`) where mamba_ssm is installed.
2. Matmul (197 x 384) @ (384 x 1536) in float32, as
   torch.nn.functional.linear(x[197, 384], W[1536, 384]) (PyTorch [out, in] layout).

Each op is run once to warm up, then `--repeats` times; the median is reported.

Usage:
    python bench/torch_reference.py [--threads 2] [--repeats 5] [--device cpu|cuda] [--json]
"""

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------
# einops is only needed by the copied reference below, and only for code paths
# this benchmark does not take (complex A, grouped B/C) plus the D broadcast.
# Use it when installed, otherwise fall back to minimal equivalents of exactly
# the patterns that `selective_scan_ref` uses.
try:
    from einops import rearrange, repeat
except ImportError:  # pragma: no cover - depends on the environment

    def rearrange(t, pattern, **axes):
        if pattern == "d -> d 1":
            return t.unsqueeze(-1)
        if pattern == "... (L two) -> ... L two":
            two = axes["two"]
            return t.reshape(*t.shape[:-1], t.shape[-1] // two, two)
        raise NotImplementedError(f"rearrange fallback: unsupported pattern {pattern!r}")

    def repeat(t, pattern, **axes):
        if pattern == "B G N L -> B (G H) N L":
            h = axes["H"]
            b, g, n, l = t.shape
            return t.unsqueeze(2).expand(b, g, h, n, l).reshape(b, g * h, n, l)
        raise NotImplementedError(f"repeat fallback: unsupported pattern {pattern!r}")


# ---------------------------------------------------------------------------
# The function below is copied verbatim from state-spaces/mamba,
# mamba_ssm/ops/selective_scan_interface.py (commit
# 01887ed7d7c8da544be578979f9e155ba5f021b4), https://github.com/state-spaces/mamba
#
#   Copyright (c) 2023, Tri Dao, Albert Gu.
#   Licensed under the Apache License, Version 2.0
#   (http://www.apache.org/licenses/LICENSE-2.0).
#
# It is the pure-PyTorch reference of the CUDA selective scan kernel.


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, cu_seqlens=None):
    """
    u: r(B D L)
    delta: r(B D L)
    A: c(D N) or r(D N)
    B: c(D N) or r(B N L) or r(B N 2L) or r(B G N L) or (B G N L)
    C: c(D N) or r(B N L) or r(B N 2L) or r(B G N L) or (B G N L)
    D: r(D)
    z: r(B D L)
    delta_bias: r(D), fp32

    out: r(B D L)
    last_state (optional): r(B D dstate) or c(B D dstate)
    """
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    if A.is_complex():
        if is_variable_B:
            B = torch.view_as_complex(rearrange(B.float(), "... (L two) -> ... L two", two=2))
        if is_variable_C:
            C = torch.view_as_complex(rearrange(C.float(), "... (L two) -> ... L two", two=2))
    else:
        B = B.float()
        C = C.float()
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum('bdl,dn->bdln', delta, A))
    if not is_variable_B:
        deltaB_u = torch.einsum('bdl,dn,bdl->bdln', delta, B, u)
    else:
        if B.dim() == 3:
            deltaB_u = torch.einsum('bdl,bnl,bdl->bdln', delta, B, u)
        else:
            B = repeat(B, "B G N L -> B (G H) N L", H=dim // B.shape[1])
            deltaB_u = torch.einsum('bdl,bdnl,bdl->bdln', delta, B, u)
    if is_variable_C and C.dim() == 4:
        C = repeat(C, "B G N L -> B (G H) N L", H=dim // C.shape[1])
    last_state = None
    for i in range(u.shape[2]):
        if cu_seqlens is not None and i in cu_seqlens[1:-1].tolist():
            x = deltaB_u[:, :, i]
        else:
            x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if not is_variable_C:
            y = torch.einsum('bdn,dn->bd', x, C)
        else:
            if C.dim() == 3:
                y = torch.einsum('bdn,bn->bd', x, C[:, :, i])
            else:
                y = torch.einsum('bdn,bdn->bd', x, C[:, :, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        if y.is_complex():
            y = y.real * 2
        ys.append(y)
    y = torch.stack(ys, dim=2) # (batch dim L)
    out = y if D is None else y + u * rearrange(D, "d -> d 1")
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)


# End of the copied code.
# ---------------------------------------------------------------------------

SCAN_SOURCE = "local copy of mamba_ssm selective_scan_ref"
try:
    # Only works where mamba_ssm (and its CUDA extension) is installed.
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as _imported_ref

    selective_scan_ref = _imported_ref  # noqa: F811
    SCAN_SOURCE = "mamba_ssm.ops.selective_scan_interface.selective_scan_ref (imported)"
except Exception:  # ImportError, or the CUDA extension failing to load
    pass

# mamba_ssm's CUDA kernel, for `--device cuda`.
try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
except Exception:
    selective_scan_fn = None

# Shapes, kept in step with `ssmgpu bench`.
SCAN_BATCH, SCAN_CHANNELS, SCAN_LENGTH, SCAN_STATE = 1, 1536, 1024, 16
VIM_TI_SCAN = (1, 384, 197, 16)
MM_M, MM_K, MM_N = 197, 384, 1536
SEED = 0


def time_median_ms(fn, repeats, device="cpu"):
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def scan_inputs(shape=(SCAN_BATCH, SCAN_CHANNELS, SCAN_LENGTH, SCAN_STATE)):
    g = torch.Generator().manual_seed(SEED)
    b, d, l, n = shape
    u = torch.randn(b, d, l, generator=g)
    delta = torch.randn(b, d, l, generator=g) * 0.5 - 1.0  # softplus'd inside the scan
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)   # negative -> stable decay
    B = torch.randn(b, n, l, generator=g)
    C = torch.randn(b, n, l, generator=g)
    D = torch.randn(d, generator=g)
    z = torch.randn(b, d, l, generator=g)
    delta_bias = torch.randn(d, generator=g) * 0.1
    return u, delta, A, B, C, D, z, delta_bias


def matmul_inputs():
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(MM_M, MM_K, generator=g)
    w = torch.randn(MM_N, MM_K, generator=g) / MM_K ** 0.5  # [out, in]
    return x, w


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where PyTorch runs (cuda: also mamba_ssm's CUDA scan where installed)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    dev = args.device

    def time_scan(shape, fn):
        u, delta, A, B, C, D, z, delta_bias = (t.to(dev) for t in scan_inputs(shape))

        def run():
            return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True)

        ms, all_ms = time_median_ms(run, args.repeats, dev)
        if not torch.isfinite(run()).all():
            print("warning: selective scan output has non-finite values", file=sys.stderr)
        b, d, l, n = shape
        return {"batch": b, "channels": d, "length": l, "state": n, "ms": ms, "ms_all": all_ms,
                "gexp_per_s": b * d * l * n / (ms * 1e-3) / 1e9}

    scans = {}
    shapes = {"selective_scan": (SCAN_BATCH, SCAN_CHANNELS, SCAN_LENGTH, SCAN_STATE),
              "selective_scan_vim_ti": VIM_TI_SCAN}
    for key, shape in shapes.items():
        scans[key] = time_scan(shape, selective_scan_ref)
        if dev == "cuda" and selective_scan_fn is not None:
            scans[key + "_cuda_kernel"] = time_scan(shape, selective_scan_fn)

    # Matmul.
    x, w = (t.to(dev) for t in matmul_inputs())

    def run_mm():
        return F.linear(x, w)

    mm_ms, mm_all = time_median_ms(run_mm, args.repeats, dev)
    flops = 2 * MM_M * MM_N * MM_K
    mm_gflops = flops / (mm_ms * 1e-3) / 1e9

    result = {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": dev if dev == "cpu" else torch.cuda.get_device_name(),
        "scan_impl": SCAN_SOURCE,
        **scans,
        "matmul": {
            "m": MM_M, "k": MM_K, "n": MM_N, "dtype": "float32",
            "ms": mm_ms, "ms_all": mm_all, "gflop_per_s": mm_gflops,
        },
    }

    if args.json:
        print(json.dumps(result))
        return 0

    print(f"torch {torch.__version__} on {result['device']}, {result['threads']} thread(s), "
          f"median of {args.repeats} after 1 warm-up")
    print(f"selective scan impl: {SCAN_SOURCE}")
    for key, r in scans.items():
        print(f"{key} b={r['batch']} d={r['channels']} l={r['length']} n={r['state']}: "
              f"{r['ms']:9.3f} ms   {r['gexp_per_s']:7.3f} G exp/s")
    print(f"matmul {MM_M}x{MM_K} @ {MM_K}x{MM_N} f32:      "
          f"{mm_ms:9.3f} ms   {mm_gflops:7.2f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
