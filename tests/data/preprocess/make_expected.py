#!/usr/bin/env python3
"""Pillow reference for tests/preprocess.rs.

Makes a deterministic 37x53 (w x h) RGB image (gradient + noise), saves it as input.png,
runs the eval transform of timm / torchvision on it with Pillow for a few settings, and
saves the CHW float32 results to expected.safetensors. Each tensor's preprocess object (the
config.json form ssmgpu reads) is stored in the file's metadata under the tensor's name.

The transform is torchvision's, restated here so only Pillow and numpy are needed:
  img.convert("RGB" or "L")                   # timm's loader; alpha dropped
  Resize(int): short side -> size, long side -> int(size * long / short), PIL resize
  CenterCrop: pad with 0 where smaller, top = int(round((h - ch) / 2.0)), same for left
  ToTensor: / 255 in float32;  Normalize: (x - mean) / std in float32

Run from the repository root:  python3 tests/data/preprocess/make_expected.py
Needs: pillow, numpy, safetensors.
"""
import json
import os

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
W, H = 37, 53

INTERP = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

# name -> (mode, preprocess object)
CASES = {
    # timm's default for a 32 crop: floor(32 / 0.875) = 36, a downscale.
    "bicubic_down": ("RGB", {"resize_shorter": 36, "crop": [32, 32], "interpolation": "bicubic",
                             "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
    # An upscale with a non-square crop; top = round(14.5) = 14 (half to even).
    "bicubic_up": ("RGB", {"resize_shorter": 48, "crop": [39, 44], "interpolation": "bicubic",
                           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
    # A 3x downscale: the filter's support widens (antialiasing).
    "bicubic_far": ("RGB", {"resize_shorter": 12, "crop": [16, 12], "interpolation": "bicubic",
                            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
    "bilinear_down": ("RGB", {"resize_shorter": 24, "crop": [24, 20], "interpolation": "bilinear",
                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}),
    # The crop is wider than the resized image (20 wide): torchvision pads with black.
    "bicubic_pad": ("RGB", {"resize_shorter": 20, "crop": [24, 26], "interpolation": "bicubic",
                            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}),
    # 1-channel model: PIL 'L' luma of the RGB image.
    "gray_bicubic": ("L", {"resize_shorter": 28, "crop": [28, 28], "interpolation": "bicubic",
                           "mean": [0.1307], "std": [0.3081]}),
}


def make_image():
    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    base = np.stack([255 * x / (W - 1), 255 * y / (H - 1), 128 + 100 * np.sin(x / 3 + y / 5)], -1)
    img = np.clip(base + rng.normal(0, 25, size=base.shape), 0, 255).round().astype(np.uint8)
    return Image.fromarray(img, "RGB")


def transform(img, mode, p):
    img = img.convert(mode)
    # torchvision Resize(int) -> _compute_resized_output_size
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    size = p["resize_shorter"]
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), INTERP[p["interpolation"]])
    # torchvision CenterCrop
    ch, cw = p["crop"]
    w, h = img.size
    if cw > w or ch > h:
        left, top = (cw - w) // 2 if cw > w else 0, (ch - h) // 2 if ch > h else 0
        right, bottom = (cw - w + 1) // 2 if cw > w else 0, (ch - h + 1) // 2 if ch > h else 0
        padded = Image.new(img.mode, (w + left + right, h + top + bottom), 0)
        padded.paste(img, (left, top))
        img = padded
        w, h = img.size
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    img = img.crop((left, top, left + cw, top + ch))
    # ToTensor + Normalize
    a = np.asarray(img, dtype=np.float32) / np.float32(255)
    if a.ndim == 2:
        a = a[:, :, None]
    a = a.transpose(2, 0, 1)
    mean = np.asarray(p["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(p["std"], dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((a - mean) / std, dtype=np.float32)


def main():
    img = make_image()
    img.save(os.path.join(HERE, "input.png"), optimize=True)
    img = Image.open(os.path.join(HERE, "input.png"))
    tensors, meta = {}, {}
    for name, (mode, p) in CASES.items():
        tensors[name] = transform(img, mode, p)
        meta[name] = json.dumps(p)
    save_file(tensors, os.path.join(HERE, "expected.safetensors"), metadata=meta)
    for name, t in tensors.items():
        print(name, t.shape)


if __name__ == "__main__":
    main()
