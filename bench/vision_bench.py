#!/usr/bin/env python3
"""Vision models: ssmgpu on the GPU (lavapipe here) against PyTorch on the CPU, in one run.

Models: a Vim-Ti-sized model (random weights, 224 px, 24 layers, 197 tokens) and the shipped
`assets/models/vim-mnist`. For each, at batch 1 (and `--batch` if given):
  * ssmgpu: `target/release/ssmgpu bench --model DIR --json` (median forward pass, one submit);
  * PyTorch, the Vim model code in tools/vision_models.py (checked against the authors' code by
    tools/check_golden.py) with the sequential reference scan (`selective_scan_ref` semantics,
    what a CPU user of the authors' code runs), and with mambapy's parallel scan (`pscan`).
Prints ms per image and the ratios PyTorch / ssmgpu.

On a machine with an NVIDIA GPU, `--device cuda` runs PyTorch there and `--backend cuda` (a build
with `--features cuda`) or `--backend wgpu` picks the engine's backend; `--prune SPEC` also times
the engine's pruned pass (e.g. `vim-t`).

Usage: cargo build --release && python3 bench/vision_bench.py [--threads 2] [--repeats 5]
       [--device cpu|cuda] [--backend auto|wgpu|cuda] [--prune SPEC] [--json]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import vision_models  # noqa: E402

VIM_TI = {
    "model_type": "vim", "img_size": 224, "patch_size": 16, "stride": 16, "embed_dim": 192,
    "depth": 24, "channels": 3, "num_classes": 1000, "d_state": 16, "d_conv": 4, "expand": 2,
    "dt_rank": "auto", "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
    "final_pool_type": "mean", "if_abs_pos_embed": True, "if_rope": False,
    "if_rope_residual": False, "bimamba_type": "v2", "if_cls_token": True, "if_divide_out": True,
    "use_middle_cls_token": True, "norm_epsilon": 1e-5, "conv_bias": True, "bias": False,
}


def write_random_model(config, out_dir):
    torch.manual_seed(0)
    model = vision_models.build_model(config).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out_dir / "model.safetensors"))


def engine_ms(model_dir, batch, repeats, backend, prune):
    command = [str(ROOT / "target/release/ssmgpu"), "--backend", backend, "bench", "--model",
               str(model_dir), "--batch", str(batch), "--reps", str(repeats), "--json"]
    if prune:
        command += ["--prune", prune]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def torch_ms(model_dir, scan, batch, repeats, device):
    model, _ = vision_models.load_model_dir(str(model_dir), scan=scan)
    model.eval().to(device)
    config = json.loads((model_dir / "config.json").read_text())
    size = config["img_size"]
    h, w = (size, size) if isinstance(size, int) else size
    channels = config.get("channels", config.get("in_channels", 3))
    x = torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(1)).to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        model(x)  # warm-up
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="PyTorch's device")
    p.add_argument("--backend", default="auto", help="the engine's backend (auto, wgpu, cuda)")
    p.add_argument("--prune", help="also time the engine's pruned pass with this schedule")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vim_ti = Path(tmp) / "vim-ti-random"
        write_random_model(VIM_TI, vim_ti)
        models = [("Vim-Ti (random, 224 px, 24 layers)", vim_ti)]
        mnist = ROOT / "assets/models/vim-mnist"
        if (mnist / "model.safetensors").exists():
            models.append(("vim-mnist (28 px, 197 tokens)", mnist))
        for name, model_dir in models:
            engine = engine_ms(model_dir, args.batch, args.repeats, args.backend,
                               args.prune if model_dir == vim_ti else None)
            result = engine["batches"][0]["unpruned"]
            pruned = engine["batches"][0].get("pruned")
            row = {
                "model": name,
                "batch": args.batch,
                "adapter": engine["adapter"],
                # Wall time from the start of recording to the logits on the host.
                "ssmgpu_ms": result["wall_ms"]["median"],
                "gflops_per_image": result["gflops_per_image"],
                "dispatches": result["dispatches"],
            }
            if pruned:
                row["ssmgpu_pruned_ms"] = pruned["wall_ms"]["median"]
            for scan in ("ref", "pscan"):
                ms = torch_ms(model_dir, scan, args.batch, args.repeats, args.device)
                row[f"torch_{scan}_ms"] = ms
                row[f"ratio_torch_{scan}_over_ssmgpu"] = ms / row["ssmgpu_ms"]
            rows.append(row)

    if args.json:
        print(json.dumps({"threads": args.threads, "results": rows}, indent=1))
        return
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{args.threads} CPU threads"
    print(f"PyTorch {torch.__version__} on {where}; ssmgpu on {rows[0]['adapter']}")
    for r in rows:
        print(f"{r['model']}, batch {r['batch']} ({r['gflops_per_image']:.3f} GFLOPs/image, "
              f"{r['dispatches']} dispatches)")
        print(f"  ssmgpu                    {r['ssmgpu_ms']:9.1f} ms")
        if "ssmgpu_pruned_ms" in r:
            print(f"  ssmgpu, pruned            {r['ssmgpu_pruned_ms']:9.1f} ms")
        print(f"  PyTorch, reference scan   {r['torch_ref_ms']:9.1f} ms   "
              f"ssmgpu is {r['ratio_torch_ref_over_ssmgpu']:.1f}x faster")
        print(f"  PyTorch, mambapy pscan    {r['torch_pscan_ms']:9.1f} ms   "
              f"ssmgpu is {r['ratio_torch_pscan_over_ssmgpu']:.1f}x faster")


if __name__ == "__main__":
    main()
