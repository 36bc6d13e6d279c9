#!/usr/bin/env python3
"""Zero-shot token pruning on the shipped MNIST test split: top-1 against FLOPs reduction for
every alignment mode and importance metric, written to docs/pruning.md.

Each point is one `ssmgpu eval --json --prune SPEC --align A --importance I` run (the engine's
analytic FLOPs; no fine-tuning). Schedules prune after layers 1 and 2 (of the 4-layer
vim-mnist) at one keep ratio, swept to cover 0-60% FLOPs reduction.

Usage: cargo build --release && python3 bench/pruning_study.py [--model DIR] [--limit N]
"""

import argparse
import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALIGNS = ["carry", "decay", "score"]
IMPORTANCES = ["clipped", "unclipped", "l2", "random"]
RATIOS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]


def evaluate(model, limit, prune=None, align="carry", importance="clipped"):
    cmd = [str(ROOT / "target/release/ssmgpu"), "eval", "--model", str(model), "--json",
           "--batch", "64"]
    if limit:
        cmd += ["--limit", str(limit)]
    if prune:
        cmd += ["--prune", prune, "--align", align, "--importance", importance]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "assets/models/vim-mnist"))
    p.add_argument("--limit", type=int, default=None, help="first N test images only")
    p.add_argument("--out", default=str(ROOT / "docs/pruning.md"))
    args = p.parse_args()

    base = evaluate(args.model, args.limit)
    rows = []
    for ratio in RATIOS:
        spec = f"1:{ratio},2:{ratio}"
        for align in ALIGNS:
            for importance in IMPORTANCES:
                r = evaluate(args.model, args.limit, spec, align, importance)
                rows.append((spec, r["flops_reduction"], align, importance, r["top1"]))
                print(f"{spec:>12} {r['flops_reduction']*100:5.1f}% {align:>6} {importance:>9} "
                      f"top-1 {r['top1']:.2f}", flush=True)

    lines = [
        "# Token pruning on vim-mnist (zero-shot)",
        "",
        f"Model `{Path(args.model).name}`, {base['images']} test images, unpruned top-1 "
        f"{base['top1']:.2f}% at {base['gflops_per_image']:.4f} GFLOPs per image. Each cell is "
        "top-1 (%) with pruning after layers 1 and 2 at the given keep ratio; FLOPs reduction "
        "is the engine's analytic count. Made by `python3 bench/pruning_study.py`.",
        "",
    ]
    for align in ALIGNS:
        lines += [f"## align = {align}", "",
                  "| schedule | FLOPs reduction | " + " | ".join(IMPORTANCES) + " |",
                  "|---|---|" + "---|" * len(IMPORTANCES)]
        for ratio in RATIOS:
            spec = f"1:{ratio},2:{ratio}"
            cells = {imp: top1 for s, _, a, imp, top1 in rows if s == spec and a == align}
            red = next(r for s, r, a, _, _ in rows if s == spec)
            lines.append(f"| {spec} | {red*100:.1f}% | "
                         + " | ".join(f"{cells[i]:.2f}" for i in IMPORTANCES) + " |")
        lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
