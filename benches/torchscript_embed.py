#!/usr/bin/env python3
"""Embeds a pair set's images with a `trainer export` TorchScript model in PyTorch and
prints the largest absolute difference from `trainer embed`'s .npy of the same set.

    python benches/torchscript_embed.py model.pt lfw.bin lfw.npy

Images are decoded with PIL and normalised as trainer's loader does, (x - 127.5) / 127.5,
NCHW float32 RGB; they must already be at the model's input size (no resize here).
"""
import io
import pickle
import sys

import numpy as np
import torch
from PIL import Image


def main():
    model_path, pairs_path, npy_path = sys.argv[1:4]
    model = torch.jit.load(model_path, map_location="cpu").eval()
    with open(pairs_path, "rb") as f:
        images, _issame = pickle.load(f, encoding="bytes")
    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.float32) for b in images])
    x = (x - np.float32(127.5)) / np.float32(127.5)
    with torch.no_grad():
        got = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    want = np.load(npy_path)
    if got.shape != want.shape:
        sys.exit(f"shapes differ: TorchScript {got.shape}, trainer embed {want.shape}")
    print(float(np.abs(got - want).max()))


if __name__ == "__main__":
    main()
