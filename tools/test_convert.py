#!/usr/bin/env python3
"""Round-trip test of convert_checkpoint.py: models saved as fake official checkpoints
(Vim: {"model": sd, "optimizer": ..., "epoch": ...}; PlainMamba mmcls: {"meta": ..., "state_dict":
sd, "optimizer": ...}) must convert back to bitwise-equal tensors, load strictly, and give the same
logits; wrong archs / damaged checkpoints must be refused.

usage: python tools/test_convert.py [GOLDEN_DIR]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import convert_checkpoint as cc  # noqa: E402
import vision_models as vm  # noqa: E402
from check_golden import default_dir  # noqa: E402


def wrap(sd, model_type):
    if model_type == "vim":
        return {"model": sd, "optimizer": {"state": {}}, "lr_scheduler": {}, "epoch": 299, "args": None}
    return {"meta": {"epoch": 300, "CLASSES": None}, "state_dict": sd, "optimizer": {"state": {}}}


def roundtrip(tmp, name, sd, model_type, **kw):
    src = tmp / f"{name}.pth"
    torch.save(wrap(sd, model_type), src)
    out = tmp / name
    cc.convert(str(src), str(out), **kw)
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(sd), f"{name}: key sets differ"
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), f"{name}: {k} differs"
    return out


def expect_fail(tmp, name, sd, model_type, needle, **kw):
    src = tmp / f"{name}.pth"
    torch.save(wrap(sd, model_type), src)
    try:
        cc.convert(str(src), str(tmp / name), **kw)
    except SystemExit as e:
        assert needle in str(e), f"{name}: unexpected message {e}"
        print(f"  refused as expected ({name}): {str(e).splitlines()[0][:110]}...")
        return
    raise AssertionError(f"{name}: conversion should have failed")


def main():
    torch.manual_seed(0)
    gdir = Path(sys.argv[1]) if len(sys.argv) > 1 else default_dir()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # full-size presets with random weights (Vim-Ti, PlainMamba-L1)
        for arch in ("vim-ti", "plainmamba-l1"):
            cfg = cc.ARCHS[arch]
            sd = {k: v.clone() for k, v in vm.build_model(cfg).state_dict().items()}
            out = roundtrip(tmp, arch, sd, cfg["model_type"], arch=arch)
            c = json.loads((out / "config.json").read_text())
            assert c["model_type"] == cfg["model_type"] and c["preprocess"]["crop"] == [224, 224]
            vm.load_model_dir(out)  # strict load
            print(f"{arch}: {len(sd)} tensors bitwise equal after conversion, strict load ok")
        # golden models (their own configs) -> same logits as the golden output
        for case in sorted(p for p in gdir.iterdir() if (p / "config.json").is_file()):
            cfg = json.loads((case / "config.json").read_text())
            sd = load_file(str(case / "model.safetensors"))
            out = roundtrip(tmp, case.name, sd, cfg["model_type"], config=cfg)
            model, _ = vm.load_model_dir(out)
            x = load_file(str(case / "input.safetensors"))["pixel_values"]
            with torch.no_grad():
                err = (model(x) - load_file(str(case / "output.safetensors"))["logits"]).abs().max().item()
            assert err < 1e-4
            print(f"{case.name}: bitwise equal, logits max abs err {err:.1e}")
        # refusals
        cfg = cc.ARCHS["vim-ti"]
        sd = vm.build_model(cfg).state_dict()
        expect_fail(tmp, "vim-ti-as-vim-s", dict(sd), "vim", "shape mismatches", arch="vim-s")
        bad = dict(sd)
        del bad["layers.3.mixer.A_b_log"]
        expect_fail(tmp, "missing-key", bad, "vim", "missing keys", arch="vim-ti")
        extra = dict(sd)
        extra["layers.0.mixer.extra"] = torch.zeros(1)
        expect_fail(tmp, "extra-key", extra, "vim", "unexpected keys", arch="vim-ti")
        cc.convert(str(tmp / "extra-key.pth"), str(tmp / "extra-ok"), arch="vim-ti", drop_unexpected=True)
        expect_fail(tmp, "vim-as-plainmamba", dict(sd), "plainmamba", "missing keys", arch="plainmamba-l1")
        # the command line
        r = subprocess.run([sys.executable, str(HERE / "convert_checkpoint.py"), str(tmp / "vim-ti.pth"),
                            str(tmp / "cli"), "--arch", "vim-ti"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        r = subprocess.run([sys.executable, str(HERE / "convert_checkpoint.py"), str(tmp / "vim-ti.pth"),
                            str(tmp / "cli2"), "--arch", "vim-b"], capture_output=True, text=True)
        assert r.returncode != 0 and "does not match --arch vim-b" in r.stderr, r.stderr
    print("all conversion tests pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
