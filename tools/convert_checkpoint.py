#!/usr/bin/env python3
"""Convert an official Vim / PlainMamba checkpoint into an engine model folder.

usage: python tools/convert_checkpoint.py SRC.pth OUT_DIR --arch ARCH [--drop-unexpected]
       python tools/convert_checkpoint.py SRC.pth OUT_DIR --config CONFIG.json  (any other size)

ARCH: vim-ti | vim-s | vim-b (hustvl/Vim, weights under checkpoint["model"]) or
      plainmamba-l1 | plainmamba-l2 | plainmamba-l3 (ChenhongyiYang/PlainMamba mmcls checkpoints,
      weights under checkpoint["state_dict"]). A bare state dict is accepted too.

Writes OUT_DIR/config.json (model_type + the authors' constructor arguments for the arch, img_size
224, num_classes 1000, and the `preprocess` of the authors' evaluation transform) and
OUT_DIR/model.safetensors (the tensors with their keys unchanged, floats as f32; BatchNorm
`num_batches_tracked` kept as int64 like in the authors' state dict). Every expected key must be
present with the expected shape; otherwise it stops with the list of problems. Unexpected keys stop
it too unless --drop-unexpected is given (they are then listed and left out).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vision_models as vm  # noqa: E402

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

_VIM_COMMON = {
    "model_type": "vim", "img_size": 224, "patch_size": 16, "stride": 16, "depth": 24,
    "channels": 3, "num_classes": 1000, "d_state": 16, "d_conv": 4, "expand": 2,
    "dt_rank": "auto", "conv_bias": True, "bias": False, "norm_epsilon": 1e-5, "rms_norm": True,
    "residual_in_fp32": True, "fused_add_norm": True, "final_pool_type": "mean",
    "if_abs_pos_embed": True, "if_rope": False, "if_rope_residual": False, "bimamba_type": "v2",
    "if_cls_token": True, "if_divide_out": True, "use_middle_cls_token": True,
    "drop_rate": 0.0, "drop_path_rate": 0.0,
    # vim/datasets.py build_transform (DeiT): Resize(int(224 / eval_crop_ratio 0.875) = 256,
    # bicubic) on the shorter side, CenterCrop(224), ToTensor, Normalize(ImageNet mean/std)
    "preprocess": {"resize_shorter": 256, "crop": [224, 224], "interpolation": "bicubic", **IMAGENET},
}
_PM_COMMON = {
    "model_type": "plainmamba", "img_size": 224, "in_channels": 3, "patch_size": 16,
    "use_rms_norm": False, "d_state": 16, "expand": 2, "conv_size": 7, "conv_bias": True,
    "bias": True, "default_hw_shape": [14, 14], "final_norm_eps": 1e-6, "layer_norm_eps": 1e-5,
    "num_classes": 1000,
    # mmcls configs/_base_/datasets/imagenet_bs64_swin_224.py test_pipeline: Resize(size=(256, -1),
    # pillow, bicubic) = shorter side 256, CenterCrop(224), Normalize(mean=[123.675, 116.28,
    # 103.53], std=[58.395, 57.12, 57.375], to_rgb) = ImageNet mean/std on the 0..1 scale
    "preprocess": {"resize_shorter": 256, "crop": [224, 224], "interpolation": "bicubic", **IMAGENET},
}
ARCHS = {
    "vim-ti": {**_VIM_COMMON, "embed_dim": 192},
    "vim-s": {**_VIM_COMMON, "embed_dim": 384},
    "vim-b": {**_VIM_COMMON, "embed_dim": 768},
    "plainmamba-l1": {**_PM_COMMON, "embed_dims": 192, "num_layers": 24, "num_convs_patch_embed": 1,
                      "layers_with_dwconv": [0]},
    "plainmamba-l2": {**_PM_COMMON, "embed_dims": 384, "num_layers": 24, "num_convs_patch_embed": 2,
                      "layers_with_dwconv": []},
    "plainmamba-l3": {**_PM_COMMON, "embed_dims": 448, "num_layers": 36, "num_convs_patch_embed": 2,
                      "layers_with_dwconv": []},
}


def extract_state_dict(ckpt, model_type):
    if isinstance(ckpt, dict):
        for key in (("model", "state_dict") if model_type == "vim" else ("state_dict", "model")):
            if key in ckpt and isinstance(ckpt[key], dict):
                return ckpt[key], key
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return ckpt, None
    raise SystemExit("error: no state dict found (expected checkpoint['model'] for Vim or "
                     "checkpoint['state_dict'] for PlainMamba); top-level keys: "
                     + (", ".join(map(str, list(ckpt)[:20])) if isinstance(ckpt, dict) else type(ckpt).__name__))


def describe(sd, model_type):
    """What the checkpoint itself says about its size (for clearer errors)."""
    try:
        if model_type == "vim":
            d = sd["patch_embed.proj.weight"].shape[0]
            n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
        else:
            d = sd["backbone.patch_embed.projection.weight"].shape[0]
            n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.layers."))
        return f"embed dim {d}, {n} layers"
    except Exception:
        return "unrecognised layout"


def convert(src, out_dir, arch=None, drop_unexpected=False, config=None):
    """arch: a key of ARCHS; or config: a flat config dict (e.g. a golden case's config.json)."""
    if config is not None:
        cfg = {k: v for k, v in config.items() if k not in ("provenance", "source")}
        arch = arch or "custom config"
    else:
        cfg = json.loads(json.dumps(ARCHS[arch]))
    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    sd, where = extract_state_dict(ckpt, cfg["model_type"])
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}

    with torch.device("meta"):
        ref = vm.build_model(cfg).state_dict()
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    bad_shape = [f"{k}: checkpoint {tuple(sd[k].shape)}, {arch} expects {tuple(ref[k].shape)}"
                 for k in ref if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. " + ", ".join(missing[:8]))
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatches, e.g.\n    " + "\n    ".join(bad_shape[:8]))
    if unexpected and not drop_unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (use --drop-unexpected to leave them out), e.g. "
                        + ", ".join(unexpected[:8]))
    if problems:
        raise SystemExit(f"error: {src} does not match --arch {arch} (checkpoint: {describe(sd, cfg['model_type'])}):\n  "
                         + "\n  ".join(problems))
    if unexpected:
        print(f"dropping {len(unexpected)} unexpected keys: " + ", ".join(unexpected))

    tensors = {}
    for k in ref:
        t = sd[k].detach()
        t = t.to(torch.float32) if t.is_floating_point() else t
        tensors[k] = t.contiguous().clone()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(tensors, str(out / "model.safetensors"))
    preprocess = cfg.pop("preprocess", None)
    if preprocess is not None:
        cfg["preprocess"] = preprocess
    cfg["source"] = {"checkpoint": Path(src).name, "arch": arch, "state_dict_key": where}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    print(f"wrote {out}/config.json and model.safetensors ({len(tensors)} tensors, "
          f"{sum(t.numel() for t in tensors.values()) / 1e6:.2f}M values) for {arch}")
    return tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out_dir")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--arch", choices=sorted(ARCHS))
    g.add_argument("--config", help="flat config.json to use instead of an --arch preset")
    ap.add_argument("--drop-unexpected", action="store_true")
    args = ap.parse_args()
    config = json.loads(Path(args.config).read_text()) if args.config else None
    convert(args.src, args.out_dir, args.arch, args.drop_unexpected, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
