#!/usr/bin/env python3
"""Check tools/vision_models.py against the golden vision cases (authors' code outputs).

usage: python tools/check_golden.py [GOLDEN_DIR] [--scans ref,ckernel,pscan] [--tol 1e-4]

GOLDEN_DIR defaults to ../shared/golden/vision (relative to the repository root), else
tests/data/golden/vision. For every case folder (config.json, model.safetensors, input*.safetensors,
output*.safetensors) the model is built from config.json, loaded with strict=True, and run with each
scan implementation; the max abs error of the logits and of every intermediate that the golden
output holds is printed. Exit status 1 if any logits error is above --tol.
"""

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vision_models as vm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def default_dir():
    for p in (REPO.parent / "shared" / "golden" / "vision", REPO / "tests" / "data" / "golden" / "vision"):
        if p.is_dir():
            return p
    return REPO / "tests" / "data" / "golden" / "vision"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("golden_dir", nargs="?", default=None)
    ap.add_argument("--scans", default=None, help="comma list (default: ref, ckernel if it builds, pscan if installed)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grad", action="store_true", help="also compare parameter gradients of the fast scans with ref")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gdir = Path(args.golden_dir) if args.golden_dir else default_dir()
    if args.scans:
        scans = args.scans.split(",")
    else:
        scans = ["ref"]
        if vm.kernel_available():
            scans.append("ckernel")
        if importlib.util.find_spec("mambapy") is not None:
            scans.append("pscan")
    cases = sorted(p for p in gdir.iterdir() if (p / "config.json").is_file())
    if not cases:
        print(f"no golden cases under {gdir}")
        return 2
    print(f"golden dir: {gdir}\nscans: {', '.join(scans)}\n")
    worst = 0.0
    failed = []
    for case in cases:
        model, cfg = vm.load_model_dir(case)
        pairs = [("input", "output")]
        if (case / "input_batch2.safetensors").exists():
            pairs.append(("input_batch2", "output_batch2"))
        for inp, outp in pairs:
            x = load_file(str(case / f"{inp}.safetensors"))["pixel_values"]
            ref = load_file(str(case / f"{outp}.safetensors"))
            for scan in scans:
                vm.set_model_scan_impl(model, scan)
                trace = {}
                with torch.no_grad():
                    model(x, trace=trace)  # intermediates (unfused path)
                    trace["logits"] = model(x)  # logits from the path training uses
                errs = {}
                for k, v in ref.items():
                    if k in trace:
                        errs[k] = (trace[k].double() - v.double()).abs().max().item()
                if "probs" in ref:
                    errs["probs"] = (torch.softmax(trace["logits"].double(), -1) - ref["probs"].double()).abs().max().item()
                if "scan_orders" in ref:
                    L = ref["scan_orders"].shape[1]
                    grid = tuple(trace["layers.0.dw_in_bchw"].shape[2:]) if "layers.0.dw_in_bchw" in trace else None
                    if grid is None:
                        raise RuntimeError("cannot infer grid")
                    o, inv, d = vm.snake_scan_orders(*grid)
                    ok = (torch.equal(torch.tensor(o), ref["scan_orders"]) and torch.equal(torch.tensor(inv), ref["scan_inverse_orders"])
                          and torch.equal(torch.tensor(d), ref["scan_direction_ids"]))
                    errs["scan_orders/dir_ids (exact)"] = 0.0 if ok else float("inf")
                    assert L == grid[0] * grid[1]
                le = errs["logits"]
                worst = max(worst, le)
                inter = {k: e for k, e in errs.items() if k != "logits"}
                wk = max(inter, key=inter.get)
                shown = " ".join(f"{k}={errs[k]:.1e}" for k in ("patch_embed_out", "embed_tokens", "final_norm_out", "head_input") if k in errs)
                status = "ok" if le <= args.tol and all(e <= args.tol for e in inter.values()) else "FAIL"
                if status == "FAIL":
                    failed.append(f"{case.name}/{outp}/{scan}")
                print(f"{case.name:26s} {outp:14s} {scan:8s} logits max abs {le:.2e}  [{shown}]  "
                      f"worst of {len(inter)} intermediates: {wk} {inter[wk]:.1e}  {status}")
    if args.grad:
        print("\ngradients, fast scans vs ref (max abs diff / max abs grad over all parameters):")
        for case in cases:
            model, cfg = vm.load_model_dir(case)
            x = load_file(str(case / "input.safetensors"))["pixel_values"]
            model.train()
            for m in model.modules():  # keep BN in eval so both runs see the same statistics
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
            g = torch.Generator().manual_seed(0)
            w = None
            grads = {}
            for scan in scans:
                vm.set_model_scan_impl(model, scan)
                model.zero_grad()
                out = model(x)
                if w is None:
                    w = torch.randn(out.shape, generator=g)
                (out * w).sum().backward()
                grads[scan] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            for scan in scans[1:]:
                rel = max(((grads[scan][n] - gr).abs().max() / gr.abs().max().clamp_min(1e-12)).item()
                          for n, gr in grads["ref"].items())
                worst_n = max(grads["ref"], key=lambda n: ((grads[scan][n] - grads["ref"][n]).abs().max()
                                                           / grads["ref"][n].abs().max().clamp_min(1e-12)).item())
                ok = rel < 1e-3
                print(f"{case.name:26s} {scan:8s} worst relative grad diff {rel:.1e} ({worst_n}) {'ok' if ok else 'FAIL'}")
                if not ok:
                    failed.append(f"{case.name}/grad/{scan}")
    print(f"\nworst logits error {worst:.2e} (tol {args.tol:g})")
    if failed:
        print("FAILED:", ", ".join(failed))
        return 1
    print("all cases pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
