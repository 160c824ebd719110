#!/usr/bin/env python3
"""The model step of benches/ijb_twin.py, in the PyTorch venv: eval_ijbc.py's
model(img) + model(flipped img) on aligned crops, with a `trainer export` TorchScript model.

    python benches/ijb_twin_embed.py model.pt crops.npy features.npy

crops.npy is N x S x S x 3 uint8 RGB (ijb_twin.py align); the input is normalised as
eval_ijbc.py does, x / 255 - 0.5, / 0.5; features.npy gets the N x dim float32 sums.
"""
import sys

import numpy as np
import torch


def main():
    model_path, crops_path, out_path = sys.argv[1:4]
    model = torch.jit.load(model_path, map_location="cpu").eval()
    crops = np.load(crops_path)
    imgs = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    imgs.div_(255).sub_(0.5).div_(0.5)
    with torch.no_grad():
        feats = model(imgs) + model(imgs.flip(3))
    np.save(out_path, feats.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
