#!/usr/bin/env python3
"""Evaluate a model folder on assets/data/mnist/test.safetensors (and the sample PNGs) in PyTorch,
using only what the engine gets: config.json (incl. `preprocess`) and model.safetensors.

usage: python tools/eval_mnist.py MODEL_DIR [--scan ref|ckernel|pscan] [--threads 2]
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist_data  # noqa: E402
import vision_models as vm  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def pixels(u8, pre):
    """[N, H, W] u8 -> [N, 1, H, W] f32 as the engine's preprocess does for 28x28 inputs (the
    resize to shorter side 28 and the 28x28 center crop are identities there)."""
    x = torch.from_numpy(np.array(u8)).float()[:, None] / 255.0
    assert list(x.shape[2:]) == pre["crop"] and pre["resize_shorter"] == min(x.shape[2:])
    mean = torch.tensor(pre["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(pre["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir")
    ap.add_argument("--scan", default="ref")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, cfg = vm.load_model_dir(args.model_dir, scan=args.scan)
    pre = cfg["preprocess"]
    images, labels = mnist_data.load_test()
    preds = []
    with torch.no_grad():
        for i in range(0, len(images), 250):
            preds.append(model(pixels(images[i:i + 250], pre)).argmax(-1))
    preds = torch.cat(preds).numpy()
    correct = int((preds == labels).sum())
    print(f"{args.model_dir}: test top-1 {100 * correct / len(labels):.2f}% ({correct}/{len(labels)}, scan {args.scan})")
    from PIL import Image

    for p in sorted((REPO / "assets" / "samples" / "mnist").glob("digit*.png")):
        img = np.asarray(Image.open(p).convert("L"))[None]
        with torch.no_grad():
            logits = model(pixels(img, pre))[0]
        print(f"  {p.name}: pred {int(logits.argmax())} (p={float(torch.softmax(logits, -1).max()):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
