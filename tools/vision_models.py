"""PyTorch re-implementations of Vim (hustvl/Vim) and PlainMamba (ChenhongyiYang/PlainMamba).

Written from the specification in ALGORITHMS.md sections 2-3 and the golden README (no code of the
authors is copied). Module and parameter names reproduce the authors' state-dict keys, so the
authors' checkpoints (and the golden `model.safetensors`) load with `load_state_dict(strict=True)`:

* Vim: `patch_embed.proj.*`, `cls_token`, `pos_embed`, `layers.i.norm.weight`,
  `layers.i.mixer.{in_proj,conv1d,x_proj,dt_proj,out_proj,A_log,D}` and the `_b` set,
  `norm_f.weight`, `head.*`.
* PlainMamba (mmcls ImageClassifier): `backbone.patch_embed.{stem,convs,projection}.*`,
  `backbone.pos_embed`, `backbone.layers.i.{norm,dw,mamba}.*`, `backbone.ln1.*`, `head.fc.*`.

Models are built from the flat `config.json` format that the Rust engine loads (`model_type` plus
the authors' constructor arguments): `build_model(config)`.

Scan implementations (`set_scan_impl(name)` or `model.scan_impl = name`):
* `ref`: the sequential recurrence of mamba_ssm's `selective_scan_ref` (fp32), for checking.
* `ckernel`: fused C kernels (tools/scan_kernel.c: the scan with softplus(delta + bias), D skip and
  silu(z) gate, and Vim's causal conv1d + SiLU; forward and backward; compiled on first use with
  the system C compiler and cached). Without `trace`, the mixers then run on channel-last tensors
  with no flips or permuted copies; the fast path for CPU training.
* `pscan`: mambapy's parallel (Blelloch) scan (`pip install mambapy`).
* `fast`: `ckernel` when a C compiler is available, else `pscan`.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------
# Selective scan
# --------------------------------------------------------------------------------------------


def _scan_core_ref(u, delta, A, B, C):
    """Sequential scan, as selective_scan_ref. u, delta: [b, d, l]; A: [d, n]; B, C: [b, n, l].
    Returns y[b, d, l] = sum_n C h (without the D skip)."""
    dA = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # [b, d, l, n]
    dBu = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # [b, d, l, n]
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    return torch.stack(ys, dim=2)


def _scan_core_pscan(u, delta, A, B, C):
    from mambapy.pscan import pscan  # (B, L, D, N) layout

    dA = torch.exp(delta.transpose(1, 2).unsqueeze(-1) * A)  # [b, l, d, n]
    BX = (delta * u).transpose(1, 2).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
    hs = pscan(dA, BX)
    return (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1).transpose(1, 2)


_KERNEL = None
_KERNEL_ERR = None


def _load_kernel():
    """Compile tools/scan_kernel.c (once, cached by source hash) and load it with ctypes."""
    global _KERNEL, _KERNEL_ERR
    if _KERNEL is not None:
        return _KERNEL
    if _KERNEL_ERR is not None:
        raise RuntimeError(_KERNEL_ERR)
    src = Path(__file__).with_name("scan_kernel.c")
    code = src.read_bytes()
    tag = hashlib.sha256(code).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssmgpu-tools"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "ssmgpu-tools"
        cache.mkdir(parents=True, exist_ok=True)
    so = cache / f"scan_kernel-{tag}.so"
    if not so.exists():
        cc = os.environ.get("CC", "cc")
        errs = []
        for flags in (["-march=native", "-fopenmp"], ["-fopenmp"], []):
            tmp = so.with_suffix(f".{os.getpid()}.tmp")
            cmd = [cc, "-O3", "-ffast-math", *flags, "-shared", "-fPIC", str(src), "-o", str(tmp), "-lm"]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as e:
                errs.append(f"{cmd[0]}: {e}")
                break
            if r.returncode == 0:
                os.replace(tmp, so)
                break
            errs.append(" ".join(cmd) + "\n" + r.stderr)
        if not so.exists():
            _KERNEL_ERR = "could not compile scan_kernel.c:\n" + "\n".join(errs)
            raise RuntimeError(_KERNEL_ERR)
    lib = ctypes.CDLL(str(so))
    lib.ssm_scan_fwd.argtypes = [ctypes.POINTER(_ScanArgs)]
    lib.ssm_scan_bwd.argtypes = [ctypes.POINTER(_ScanArgs)]
    lib.dwconv1d_silu_fwd.argtypes = [ctypes.POINTER(_ConvArgs)]
    lib.dwconv1d_silu_bwd.argtypes = [ctypes.POINTER(_ConvArgs)]
    _KERNEL = lib
    return lib


def kernel_available():
    try:
        _load_kernel()
        return True
    except Exception:
        return False


_P, _L, _F, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int


class _T3(ctypes.Structure):
    _fields_ = [("p", _P), ("bs", _L), ("ts", _L), ("cs", _L)]


class _ScanArgs(ctypes.Structure):
    _fields_ = ([("nb", _L), ("L", _L), ("E", _L), ("N", _L), ("ndir", _L)]
                + [(n, _T3) for n in ("u", "dr", "B", "C", "z", "y")]
                + [(n, _P) for n in ("dbias", "A", "D", "dirB", "dirs", "uidx", "pidx")]
                + [("out_scale", _F), ("softplus", _I), ("nthreads", _I)]
                + [(n, _T3) for n in ("dy", "du", "ddr", "dB", "dC", "dz")]
                + [(n, _P) for n in ("dbias_p", "dA_p", "dD_p", "ddirB_p")])


class _ConvArgs(ctypes.Structure):
    _fields_ = ([("nb", _L), ("L", _L), ("E", _L), ("K", _L), ("x", _T3), ("y", _T3),
                 ("w", _P), ("bias", _P), ("reverse", _I), ("nthreads", _I),
                 ("dy", _T3), ("dx", _T3), ("dw_p", _P), ("dbias_p", _P)])


def _t3(t, layout):
    """Strided (batch, token, channel) view of a 3-D f32 tensor; layout 'blc' or 'bcl'."""
    if t is None:
        return _T3(None, 0, 0, 0)
    assert t.dtype == torch.float32 and t.dim() == 3
    sb, s1, s2 = t.stride()
    return _T3(t.data_ptr(), sb, s1, s2) if layout == "blc" else _T3(t.data_ptr(), sb, s2, s1)


def _p(t):
    return None if t is None else t.data_ptr()


def _f32(t):
    return None if t is None else t.detach().float()


class _FusedScan(torch.autograd.Function):
    """selective_scan(+D skip, silu(z) gate, delta bias + softplus) in the C kernel; see
    scan_kernel.c for the index maps. layout: 'blc' ([b, L, E]) or 'bcl' ([b, E, L])."""

    @staticmethod
    def forward(ctx, u, dr, dbias, A, B, C, D, z, dirB, uidx, pidx, dirs, out_scale, layout):
        lib = _load_kernel()
        u, dr, z = _f32(u), _f32(dr), _f32(z)
        A, D, dbias = _f32(A).contiguous(), _f32(D), _f32(dbias)
        D = None if D is None else D.contiguous()
        dbias = None if dbias is None else dbias.contiguous()
        dirB = None if dirB is None else _f32(dirB).contiguous()
        B, C = _f32(B), _f32(C)
        if layout == "bcl":  # B, C given as [b, N, L]
            B, C = B.transpose(1, 2), C.transpose(1, 2)
        B, C = B.contiguous(), C.contiguous()  # [b, L, N]
        nb = u.shape[0]
        L, E = (u.shape[1], u.shape[2]) if layout == "blc" else (u.shape[2], u.shape[1])
        N = A.shape[1]
        if N > 64:
            raise ValueError("ckernel scan supports d_state <= 64")
        y = torch.empty(u.shape, dtype=torch.float32)
        args = _ScanArgs(nb=nb, L=L, E=E, N=N, ndir=0 if dirB is None else dirB.shape[0],
                         u=_t3(u, layout), dr=_t3(dr, layout), B=_t3(B, "blc"), C=_t3(C, "blc"),
                         z=_t3(z, layout), y=_t3(y, layout), dbias=_p(dbias), A=_p(A), D=_p(D),
                         dirB=_p(dirB), dirs=_p(dirs), uidx=_p(uidx), pidx=_p(pidx),
                         out_scale=out_scale, softplus=1, nthreads=torch.get_num_threads())
        if lib.ssm_scan_fwd(ctypes.byref(args)):
            raise RuntimeError("ssm_scan_fwd failed")
        ctx.save_for_backward(u, dr, dbias, A, B, C, D, z, dirB, uidx, pidx, dirs)
        ctx.meta = (layout, out_scale, nb, L, E, N)
        return y

    @staticmethod
    def backward(ctx, dy):
        lib = _load_kernel()
        u, dr, dbias, A, B, C, D, z, dirB, uidx, pidx, dirs = ctx.saved_tensors
        layout, out_scale, nb, L, E, N = ctx.meta
        dy = dy.float()
        e0 = lambda t: None if t is None else torch.empty(t.shape, dtype=torch.float32)  # noqa: E731
        du, ddr, dB, dC, dz = e0(u), e0(dr), e0(B), e0(C), e0(z)  # fully written by the kernel
        dbias_p = None if dbias is None else torch.zeros(nb, E)
        dA_p = torch.zeros(nb, E, N)
        dD_p = None if D is None else torch.zeros(nb, E)
        ddirB_p = None if dirB is None else torch.zeros(nb, dirB.shape[0], N)
        args = _ScanArgs(nb=nb, L=L, E=E, N=N, ndir=0 if dirB is None else dirB.shape[0],
                         u=_t3(u, layout), dr=_t3(dr, layout), B=_t3(B, "blc"), C=_t3(C, "blc"),
                         z=_t3(z, layout), y=_T3(None, 0, 0, 0), dbias=_p(dbias), A=_p(A), D=_p(D),
                         dirB=_p(dirB), dirs=_p(dirs), uidx=_p(uidx), pidx=_p(pidx),
                         out_scale=out_scale, softplus=1, nthreads=torch.get_num_threads(),
                         dy=_t3(dy, layout), du=_t3(du, layout), ddr=_t3(ddr, layout),
                         dB=_t3(dB, "blc"), dC=_t3(dC, "blc"), dz=_t3(dz, layout),
                         dbias_p=_p(dbias_p), dA_p=_p(dA_p), dD_p=_p(dD_p), ddirB_p=_p(ddirB_p))
        if lib.ssm_scan_bwd(ctypes.byref(args)):
            raise RuntimeError("ssm_scan_bwd failed")
        if layout == "bcl":
            dB, dC = dB.transpose(1, 2), dC.transpose(1, 2)
        s = lambda t: None if t is None else t.sum(0)  # noqa: E731
        return (du, ddr, s(dbias_p), dA_p.sum(0), dB, dC, s(dD_p), dz, s(ddirB_p),
                None, None, None, None, None)


_IDX_CACHE = {}


def _index(kind, L):
    key = (kind, L)
    if key not in _IDX_CACHE:
        r = torch.arange(L, dtype=torch.long)
        _IDX_CACHE[key] = r if kind == "fwd" else r.flip(0).contiguous()
    return _IDX_CACHE[key]


def fused_scan(u, dr, dbias, A, B, C, D=None, z=None, layout="blc", reverse=False, uidx=None,
               pidx=None, dirB=None, dirs=None, out_scale=1.0):
    """C-kernel selective scan with fused softplus(dr + dbias), D skip and silu(z) gate.
    layout 'blc': u, dr, z, y are [b, L, E] and B, C [b, L, N]; 'bcl': [b, E, L] and [b, N, L]."""
    L = u.shape[1] if layout == "blc" else u.shape[2]
    base = _index("rev" if reverse else "fwd", L)
    uidx = base if uidx is None else uidx
    pidx = base if pidx is None else pidx
    return _FusedScan.apply(u, dr, dbias, A, B, C, D, z, dirB, uidx, pidx, dirs, float(out_scale),
                            layout)


class _ConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, bias, reverse):
        lib = _load_kernel()
        x = _f32(x)
        w = _f32(w).reshape(w.shape[0], -1).contiguous()
        bias = None if bias is None else _f32(bias).contiguous()
        nb, L, E = x.shape
        y = torch.empty(nb, L, E)
        args = _ConvArgs(nb=nb, L=L, E=E, K=w.shape[1], x=_t3(x, "blc"), y=_t3(y, "blc"), w=_p(w),
                         bias=_p(bias), reverse=int(reverse), nthreads=torch.get_num_threads())
        lib.dwconv1d_silu_fwd(ctypes.byref(args))
        ctx.save_for_backward(x, w, bias)
        ctx.meta = (reverse,)
        return y

    @staticmethod
    def backward(ctx, dy):
        lib = _load_kernel()
        x, w, bias = ctx.saved_tensors
        (reverse,) = ctx.meta
        nb, L, E = x.shape
        K = w.shape[1]
        dy = dy.float()
        dx = torch.empty(nb, L, E)  # zeroed by the kernel
        dw_p = torch.zeros(nb, E, K)
        db_p = None if bias is None else torch.zeros(nb, E)
        args = _ConvArgs(nb=nb, L=L, E=E, K=K, x=_t3(x, "blc"), y=_T3(None, 0, 0, 0), w=_p(w),
                         bias=_p(bias), reverse=int(reverse), nthreads=torch.get_num_threads(),
                         dy=_t3(dy, "blc"), dx=_t3(dx, "blc"), dw_p=_p(dw_p), dbias_p=_p(db_p))
        lib.dwconv1d_silu_bwd(ctypes.byref(args))
        return dx, dw_p.sum(0).reshape(E, 1, K), None if db_p is None else db_p.sum(0), None


def conv1d_silu(x, weight, bias, reverse=False):
    """silu(depthwise causal conv1d) on a channel-last [b, L, E] view; reverse = causal in the
    flipped order (output stays in the original order)."""
    return _ConvSiLU.apply(x, weight, bias, reverse)


SCAN_IMPLS = {"ref": _scan_core_ref, "pscan": _scan_core_pscan, "ckernel": None}
_DEFAULT_SCAN = "ref"


def resolve_scan_impl(name):
    if name == "fast":
        return "ckernel" if kernel_available() else "pscan"
    if name not in SCAN_IMPLS:
        raise ValueError(f"unknown scan implementation {name!r} (ref, ckernel, pscan, fast)")
    return name


def set_scan_impl(name):
    """Default scan implementation for modules whose own `scan_impl` is None."""
    global _DEFAULT_SCAN
    _DEFAULT_SCAN = resolve_scan_impl(name)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                   impl=None):
    """mamba_ssm selective_scan_fn semantics (fp32). u, delta, z: [b, d, l]; A: [d, n];
    B, C: [b, n, l]; D, delta_bias: [d]. Returns (scan + D*u) * silu(z) (z optional)."""
    impl = _DEFAULT_SCAN if impl is None else impl
    dtype_in = u.dtype
    if impl == "ckernel":
        if not delta_softplus:
            raise NotImplementedError("ckernel scan always applies softplus")
        return fused_scan(u, delta, delta_bias, A, B, C, D, z, layout="bcl").to(dtype_in)
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, as the kernel and the ref
    y = SCAN_IMPLS[impl](u, delta, A.float(), B.float(), C.float())
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


class DropPath(nn.Module):
    def __init__(self, p=0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class RMSNorm(nn.Module):
    """mamba_ssm RMSNorm (weight only): y = x / sqrt(mean(x^2) + eps) * w, computed in fp32."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _init_dt_proj(dt_proj, dt_rank, dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4, dt_scale=1.0):
    std = dt_rank ** -0.5 * dt_scale
    nn.init.uniform_(dt_proj.weight, -std, std)
    dt = torch.exp(torch.rand(dt_proj.weight.shape[0]) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    with torch.no_grad():
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus


def _s4d_A_log(d_inner, d_state):
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1))


def _linspace(a, b, n):
    return [a + (b - a) * i / (n - 1) for i in range(n)] if n > 1 else [a] * n


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


# --------------------------------------------------------------------------------------------
# Vim
# --------------------------------------------------------------------------------------------


class VimMixer(nn.Module):
    """Bidirectional Mamba ("bimamba v2") as in hustvl/Vim's mamba-1p1p1 fast path."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True,
                 bias=False, if_divide_out=True):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.if_divide_out = if_divide_out
        E, R, N = self.d_inner, self.dt_rank, d_state
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        for sfx in ("", "_b"):
            setattr(self, "conv1d" + sfx, nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1,
                                                    bias=conv_bias))
            setattr(self, "x_proj" + sfx, nn.Linear(E, R + 2 * N, bias=False))
            dtp = nn.Linear(R, E, bias=True)
            _init_dt_proj(dtp, R)
            setattr(self, "dt_proj" + sfx, dtp)
        self.A_log = nn.Parameter(_s4d_A_log(E, N))
        self.D = nn.Parameter(torch.ones(E))
        self.A_b_log = nn.Parameter(_s4d_A_log(E, N))
        self.D_b = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.scan_impl = None

    def _direction(self, xz, conv, x_proj, dt_proj, A_log, D, trace, prefix):
        L = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)
        u = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=self.d_conv - 1,
                            groups=self.d_inner)[..., :L])
        x_dbl = F.linear(u.transpose(1, 2), x_proj.weight)  # [b, l, R+2N]
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # bias is applied inside the scan
        y = selective_scan(u, delta, -torch.exp(A_log.float()), Bm.transpose(1, 2),
                           Cm.transpose(1, 2), D.float(), z=z, delta_bias=dt_proj.bias.float(),
                           delta_softplus=True, impl=self.scan_impl)
        if trace is not None:
            trace[prefix + "conv_out"] = u
            trace[prefix + "y"] = y
        return y

    def _forward_fused(self, hidden):
        """Same math on channel-last tensors with the C kernels (no flips, no transposes)."""
        E, R, N = self.d_inner, self.dt_rank, self.d_state
        xz = F.linear(hidden, self.in_proj.weight, self.in_proj.bias)  # [b, l, 2E]
        x, z = xz[..., :E], xz[..., E:]
        scale = 0.5 if self.if_divide_out else 1.0
        y = 0
        for rev, sfx, A_log, D in ((False, "", self.A_log, self.D), (True, "_b", self.A_b_log, self.D_b)):
            conv = getattr(self, "conv1d" + sfx)
            u = conv1d_silu(x, conv.weight, conv.bias, reverse=rev)
            dt, Bm, Cm = torch.split(F.linear(u, getattr(self, "x_proj" + sfx).weight), [R, N, N], dim=-1)
            dtp = getattr(self, "dt_proj" + sfx)
            dr = F.linear(dt, dtp.weight)
            y = y + fused_scan(u, dr, dtp.bias, -torch.exp(A_log.float()), Bm, Cm, D, z,
                               layout="blc", reverse=rev, out_scale=scale)
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)

    def forward(self, hidden, trace=None, prefix=""):
        if trace is None and (self.scan_impl or _DEFAULT_SCAN) == "ckernel":
            return self._forward_fused(hidden)
        xz = F.linear(hidden, self.in_proj.weight, self.in_proj.bias).transpose(1, 2)  # [b,2E,l]
        if trace is not None:
            trace[prefix + "xz"] = xz
        y_f = self._direction(xz, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D,
                              trace, prefix + "fwd.")
        y_b = self._direction(xz.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b,
                              self.A_b_log, self.D_b, trace, prefix + "bwd.")
        y = (y_f + y_b.flip(-1)).transpose(1, 2)
        if self.if_divide_out:
            y = y / 2
        return F.linear(y, self.out_proj.weight, self.out_proj.bias)


class VimBlock(nn.Module):
    """Add -> RMSNorm -> mixer, returning (hidden, residual) (fused add+norm, prenorm)."""

    def __init__(self, dim, mixer, eps, drop_path=0.0):
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, hidden, residual, trace=None, prefix=""):
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        residual = residual.float()
        mixer_in = self.norm(residual)
        if trace is not None:
            trace[prefix + "mixer_in"] = mixer_in
        return self.mixer(mixer_in, trace, prefix), residual


class PatchEmbed(nn.Module):
    def __init__(self, img_size, patch_size, stride, in_chans, embed_dim):
        super().__init__()
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        self.grid_size = tuple((i - p) // stride + 1 for i, p in zip(self.img_size, self.patch_size))
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=stride)

    def forward(self, x):
        if tuple(x.shape[2:]) != self.img_size:
            raise ValueError(f"input size {tuple(x.shape[2:])} != model img_size {self.img_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionMamba(nn.Module):
    SUPPORTED = dict(rms_norm=True, fused_add_norm=True, if_abs_pos_embed=True, if_rope=False,
                     if_rope_residual=False, bimamba_type="v2", if_cls_token=True)

    def __init__(self, img_size=224, patch_size=16, stride=16, depth=24, embed_dim=192, d_state=16,
                 channels=3, num_classes=1000, drop_rate=0.0, drop_path_rate=0.1,
                 norm_epsilon=1e-5, d_conv=4, expand=2, dt_rank="auto", conv_bias=True,
                 bias=False, if_divide_out=True, use_middle_cls_token=True, **flags):
        super().__init__()
        for k, v in flags.items():
            if k in self.SUPPORTED and v != self.SUPPORTED[k]:
                raise NotImplementedError(f"Vim option {k}={v!r} is not supported")
        self.use_middle_cls_token = use_middle_cls_token
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, channels, embed_dim)
        M = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, M + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [0.0] + _linspace(0.0, drop_path_rate, depth)
        self.layers = nn.ModuleList([
            VimBlock(embed_dim, VimMixer(embed_dim, d_state, d_conv, expand, dt_rank, conv_bias,
                                         bias, if_divide_out), norm_epsilon, dpr[i])
            for i in range(depth)])
        self.norm_f = RMSNorm(embed_dim, norm_epsilon)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights(depth)

    def _init_weights(self, depth):
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight  # lecun normal
        nn.init.trunc_normal_(w, std=math.sqrt(1.0 / (w[0].numel())) / 0.87962566103423978)
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        for layer in self.layers:  # GPT-2 style rescale of the residual branch output
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(depth)

    @property
    def token_position(self):
        return self.patch_embed.num_patches // 2 if self.use_middle_cls_token else 0

    def forward(self, x, trace=None):
        x = self.patch_embed(x)
        if trace is not None:
            trace["patch_embed_out"] = x
        pos = self.token_position
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :pos], cls, x[:, pos:]], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        if trace is not None:
            trace["embed_tokens"] = x
        hidden, residual = x, None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, trace, f"layers.{i}.")
            if trace is not None:
                trace[f"layers.{i}.hidden"] = hidden
                trace[f"layers.{i}.residual"] = residual
        residual = residual + self.layers[-1].drop_path(hidden)
        out = self.norm_f(residual)
        feat = out[:, pos]
        logits = self.head(feat)
        if trace is not None:
            trace["final_norm_out"] = out
            trace["head_input"] = feat
            trace["logits"] = logits
        return logits


# --------------------------------------------------------------------------------------------
# PlainMamba
# --------------------------------------------------------------------------------------------


def snake_scan_orders(H, W):
    """The four continuous zig-zag scans of PlainMamba for an HxW grid.

    Returns (orders, inverse_orders, direction_ids), each a list of 4 lists of length H*W.
    orders[k][s] = raster index visited at step s; direction_ids[k][s] = move that arrives at
    step s (0 start, 1 right, 2 left, 3 up, 4 down)."""
    RIGHT, LEFT, UP, DOWN = 1, 2, 3, 4

    def rows(start_row, row_step, start_right):
        cells, moves = [], []
        r, right = start_row, start_right
        while 0 <= r < H:
            cols = range(W) if right else range(W - 1, -1, -1)
            for k, c in enumerate(cols):
                cells.append((r, c))
                moves.append((DOWN if row_step > 0 else UP) if k == 0 else (RIGHT if right else LEFT))
            r += row_step
            right = not right
        return cells, moves

    def cols(start_col, col_step, start_down):
        cells, moves = [], []
        c, down = start_col, start_down
        while 0 <= c < W:
            rs = range(H) if down else range(H - 1, -1, -1)
            for k, r in enumerate(rs):
                cells.append((r, c))
                moves.append((RIGHT if col_step > 0 else LEFT) if k == 0 else (DOWN if down else UP))
            c += col_step
            down = not down
        return cells, moves

    scans = [
        rows(0, 1, True),
        rows(H - 1, -1, H % 2 == 0),  # odd H: start at (H-1, W-1) going left
        cols(0, 1, True),
        cols(W - 1, -1, W % 2 == 0),  # odd W: start at (H-1, W-1) going up
    ]
    orders, inverses, dirs = [], [], []
    for cells, moves in scans:
        o = [r * W + c for r, c in cells]
        inv = [0] * len(o)
        for s, idx in enumerate(o):
            inv[idx] = s
        orders.append(o)
        inverses.append(inv)
        dirs.append([0] + moves[1:])
    return orders, inverses, dirs


class PlainMamba2D(nn.Module):
    def __init__(self, d_model, d_state=16, expand=2, dt_rank="auto", conv_size=7, conv_bias=True,
                 bias=False):
        super().__init__()
        self.d_model, self.d_state = d_model, d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        E, R, N = self.d_inner, self.dt_rank, d_state
        assert conv_size % 2 == 1
        self.in_proj = nn.Linear(d_model, 2 * E, bias=bias)
        self.conv2d = nn.Conv2d(E, E, conv_size, padding=conv_size // 2, groups=E, bias=conv_bias)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        _init_dt_proj(self.dt_proj, R)
        self.A_log = nn.Parameter(_s4d_A_log(E, N))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d_model, bias=bias)
        self.direction_Bs = nn.Parameter(torch.zeros(5, N))
        nn.init.trunc_normal_(self.direction_Bs, std=0.02)
        self.scan_impl = None
        self._orders = {}

    def scan_orders(self, hw, device):
        key = (tuple(hw), str(device))
        if key not in self._orders:
            o, inv, d = snake_scan_orders(*hw)
            self._orders[key] = tuple(torch.tensor(v, dtype=torch.long, device=device)
                                      for v in (o, inv, d))
        return self._orders[key]

    def forward(self, x, hw, trace=None, prefix=""):
        b, L, _ = x.shape
        H, W = hw
        E = self.d_inner
        xz = self.in_proj(x)
        A = -torch.exp(self.A_log.float())
        xs, z = xz.chunk(2, dim=-1)
        x2d = self.act(self.conv2d(xs.reshape(b, H, W, E).permute(0, 3, 1, 2)))
        x_conv = x2d.permute(0, 2, 3, 1).reshape(b, L, E)
        dt, Bm, Cm = torch.split(self.x_proj(x_conv), [self.dt_rank, self.d_state, self.d_state],
                                 dim=-1)
        dt = self.dt_proj(dt).transpose(1, 2)  # includes the bias; the scan adds it again
        Bm, Cm = Bm.transpose(1, 2), Cm.transpose(1, 2)  # [b, N, L], raster order
        orders, inverses, dirs = self.scan_orders(hw, x.device)
        y = 0
        if trace is None and (self.scan_impl or _DEFAULT_SCAN) == "ckernel":
            # C kernel on [b, L, E]: u read at order_k[s], delta/B/C at s, output written back at
            # order_k[s] (already un-permuted)
            Bm, Cm = Bm.transpose(1, 2), Cm.transpose(1, 2)
            dt = dt.transpose(1, 2)
            for k in range(4):
                y = y + fused_scan(x_conv, dt, self.dt_proj.bias, A, Bm, Cm, self.D, None,
                                   layout="blc", uidx=orders[k], pidx=_index("fwd", L),
                                   dirB=self.direction_Bs, dirs=dirs[k])
            return self.out_proj(y * self.act(z))
        for k in range(4):
            u = x_conv[:, orders[k]].transpose(1, 2)  # only u is permuted
            dB = self.direction_Bs[dirs[k]].t()[None]  # [1, N, L], per scan step
            yk = selective_scan(u, dt, A, Bm + dB, Cm, self.D.float(), z=None,
                                delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                                impl=self.scan_impl)
            if trace is not None:
                trace[f"{prefix}dir{k}.scan_y_scanorder"] = yk
            y = y + yk.transpose(1, 2)[:, inverses[k]]
        return self.out_proj(y * self.act(z))


class PlainMambaLayer(nn.Module):
    def __init__(self, embed_dims, with_dwconv, drop_path, ln_eps, mamba_cfg):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dims, eps=ln_eps)
        self.with_dwconv = with_dwconv
        if with_dwconv:
            self.dw = nn.Sequential(
                nn.Conv2d(embed_dims, embed_dims, 3, padding=1, bias=False, groups=embed_dims),
                nn.BatchNorm2d(embed_dims),
                nn.GELU())
        self.mamba = PlainMamba2D(embed_dims, **mamba_cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, hw, trace=None, prefix=""):
        h = self.norm(x)
        if trace is not None:
            trace[prefix + "mamba_in"] = h
        m = self.mamba(h, hw, trace, prefix)
        if trace is not None:
            trace[prefix + "mamba_out"] = m
        x = x + self.drop_path(m)
        if self.with_dwconv:
            b, l, c = x.shape
            x2 = x.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)
            if trace is not None:
                trace[prefix + "dw_in_bchw"] = x2
            x = self.dw(x2).reshape(b, c, l).permute(0, 2, 1)
        return x


class ConvPatchEmbed(nn.Module):
    """Conv7x7/s2-BN-ReLU stem, num_convs x (Conv3x3-BN-ReLU), corner padding, then a conv with
    kernel = stride = patch_size // 2 (total stride = patch_size)."""

    def __init__(self, in_channels, embed_dims, num_convs, patch_size, input_size):
        super().__init__()
        assert patch_size % 2 == 0
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(True))
        if num_convs > 0:
            convs = []
            for _ in range(num_convs):
                convs += [nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                          nn.ReLU(True)]
            self.convs = nn.Sequential(*convs)
        else:
            self.convs = None
        self.k = patch_size // 2
        self.projection = nn.Conv2d(64, embed_dims, self.k, stride=self.k, bias=True)
        h, w = (s // 2 for s in _pair(input_size))  # as the authors compute init_out_size
        self.init_out_size = (-(-h // self.k), -(-w // self.k))

    def forward(self, x):
        x = self.stem(x)
        if self.convs is not None:
            x = self.convs(x)
        H, W = x.shape[2:]
        ph, pw = (-H) % self.k, (-W) % self.k  # mmcv AdaptivePadding('corner')
        if ph or pw:
            x = F.pad(x, [0, pw, 0, ph])
        x = self.projection(x)
        hw = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), hw


class PlainMambaBackbone(nn.Module):
    def __init__(self, img_size=224, in_channels=3, patch_size=16, embed_dims=192, num_layers=24,
                 num_convs_patch_embed=1, layers_with_dwconv=(), drop_path_rate=0.0,
                 final_norm_eps=1e-6, layer_norm_eps=1e-5, mamba_cfg=None, drop_rate=0.0):
        super().__init__()
        self.patch_embed = ConvPatchEmbed(in_channels, embed_dims, num_convs_patch_embed,
                                          patch_size, img_size)
        self.patch_resolution = self.patch_embed.init_out_size
        n = self.patch_resolution[0] * self.patch_resolution[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n, embed_dims))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop_after_pos = nn.Dropout(drop_rate)
        dpr = _linspace(0.0, drop_path_rate, num_layers)
        self.layers = nn.ModuleList([
            PlainMambaLayer(embed_dims, i in layers_with_dwconv, dpr[i], layer_norm_eps,
                            dict(mamba_cfg or {}))
            for i in range(num_layers)])
        self.ln1 = nn.LayerNorm(embed_dims, eps=final_norm_eps)

    def forward(self, x, trace=None):
        x, hw = self.patch_embed(x)
        if trace is not None:
            trace["patch_embed_out"] = x
        pe = self.pos_embed
        if tuple(hw) != tuple(self.patch_resolution):  # mmcls resize_pos_embed
            C = pe.shape[-1]
            g = pe.reshape(1, *self.patch_resolution, C).permute(0, 3, 1, 2)
            g = F.interpolate(g, size=hw, mode="bicubic", align_corners=False)
            pe = g.flatten(2).transpose(1, 2)
        x = self.drop_after_pos(x + pe)
        if trace is not None:
            trace["embed_tokens"] = x
        for i, layer in enumerate(self.layers):
            x = layer(x, hw, trace, f"layers.{i}.")
            if trace is not None:
                trace[f"layers.{i}.out"] = x
        return self.ln1(x), hw


class ClsHead(nn.Module):
    def __init__(self, in_channels, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)


class PlainMambaClassifier(nn.Module):
    """mmcls ImageClassifier(PlainMamba, CustomAveragePooling, LinearClsHead)."""

    def __init__(self, num_classes=1000, **backbone_kwargs):
        super().__init__()
        self.backbone = PlainMambaBackbone(**backbone_kwargs)
        dim = self.backbone.ln1.normalized_shape[0]
        self.head = ClsHead(dim, num_classes)
        nn.init.trunc_normal_(self.head.fc.weight, std=0.02)
        nn.init.zeros_(self.head.fc.bias)

    def forward(self, x, trace=None):
        out, hw = self.backbone(x, trace)
        feat = out.mean(dim=1)
        logits = self.head.fc(feat)
        if trace is not None:
            trace["final_norm_out"] = out
            trace["head_input"] = feat
            trace["logits"] = logits
        return logits


# --------------------------------------------------------------------------------------------
# Building from the flat config.json
# --------------------------------------------------------------------------------------------

VIM_KEYS = ["img_size", "patch_size", "stride", "depth", "embed_dim", "d_state", "channels",
            "num_classes", "drop_rate", "drop_path_rate", "norm_epsilon", "d_conv", "expand",
            "dt_rank", "conv_bias", "bias", "if_divide_out", "use_middle_cls_token",
            *VisionMamba.SUPPORTED.keys()]


def build_model(cfg):
    """Build a model from the flat config dict (`model_type` + constructor args)."""
    mt = cfg.get("model_type")
    if mt == "vim":
        kw = {k: cfg[k] for k in VIM_KEYS if k in cfg}
        kw.setdefault("drop_path_rate", 0.0)
        return VisionMamba(**kw)
    if mt == "plainmamba":
        if cfg.get("use_rms_norm", False):
            raise NotImplementedError("PlainMamba use_rms_norm=True is not supported")
        mamba_cfg = {k: cfg[k] for k in ("d_state", "expand", "conv_size", "conv_bias", "bias",
                                         "dt_rank") if k in cfg}
        kw = {k: cfg[k] for k in ("img_size", "in_channels", "patch_size", "embed_dims",
                                  "num_layers", "num_convs_patch_embed", "layers_with_dwconv",
                                  "final_norm_eps", "layer_norm_eps", "drop_path_rate",
                                  "drop_rate") if k in cfg}
        return PlainMambaClassifier(num_classes=cfg.get("num_classes", 1000), mamba_cfg=mamba_cfg,
                                    **kw)
    raise ValueError(f"unknown model_type {mt!r}")


def set_model_scan_impl(model, name):
    name = resolve_scan_impl(name)
    for m in model.modules():
        if hasattr(m, "scan_impl"):
            m.scan_impl = name
    return name


def load_model_dir(path, scan="ref"):
    """Load a model folder (config.json + model.safetensors), strict key check, eval mode."""
    import json
    from safetensors.torch import load_file

    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    model = build_model(cfg)
    sd = load_file(str(path / "model.safetensors"))
    model.load_state_dict(sd, strict=True)
    set_model_scan_impl(model, scan)
    return model.eval(), cfg
