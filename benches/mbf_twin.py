#!/usr/bin/env python3
"""A PyTorch twin of arcface_torch's MobileFaceNet (`backbones/mobilefacenet.py`, `get_mbf`
and `get_mbf_large`): the same module names, shapes and forward pass, written independently,
so weights can be passed between it and `trainer`'s `model::mbf` and embeddings compared.

    mbf_twin.py make  --arch mbf --seed 1 --batch 2 --weights W.safetensors --io IO.safetensors
    mbf_twin.py embed --arch mbf --weights W.safetensors --io IO.safetensors --out OUT.safetensors

As `iresnet_twin.py`: `make` writes a settled network's state dict and an input batch with
its eval-mode embeddings; `embed` loads a state dict strictly and embeds IO's `input`.

Exit status: 0 ok, 1 error, 3 PyTorch is not installed."""
import argparse
import sys

try:
    import torch
    from torch import nn
except ImportError:
    print("PyTorch is not installed for this python", file=sys.stderr)
    sys.exit(3)

from iresnet_twin import load_tensors, save_tensors, settle

SHAPES = {"mbf": ((1, 4, 6, 2), 2), "mbf_large": ((2, 8, 12, 4), 4)}


class Block(nn.Module):
    """`layers` = conv (no bias), BN, and a PReLU unless linear."""

    def __init__(self, c_in, c_out, k, stride=1, groups=1, act=True):
        super().__init__()
        pad = 0 if k == 7 else k // 2
        parts = [nn.Conv2d(c_in, c_out, k, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
        if act:
            parts.append(nn.PReLU(c_out))
        self.layers = nn.Sequential(*parts)

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    def __init__(self, c_in, c_out, stride, groups, residual):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(Block(c_in, groups, 1), Block(groups, groups, 3, stride, groups),
                                    Block(groups, c_out, 1, act=False))

    def forward(self, x):
        y = self.layers(x)
        return x + y if self.residual else y


class Stack(nn.Module):
    def __init__(self, c, n, groups):
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, 1, groups, True) for _ in range(n)])

    def forward(self, x):
        return self.layers(x)


class Gdc(nn.Module):
    """Global depthwise conv (7×7, 512 groups), flatten, Linear 512 → emb without bias, BN."""

    def __init__(self, emb):
        super().__init__()
        self.layers = nn.Sequential(Block(512, 512, 7, 1, 512, act=False), nn.Flatten(),
                                    nn.Linear(512, emb, bias=False), nn.BatchNorm1d(emb))

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(self, arch, emb=512):
        super().__init__()
        (b0, b1, b2, b3), scale = SHAPES[arch]
        c1, c2 = 64 * scale, 128 * scale
        second = Block(c1, c1, 3, 1, 64) if b0 == 1 else Stack(c1, b0, 128)
        self.layers = nn.ModuleList([
            Block(3, c1, 3, 2), second,
            DepthWise(c1, c1, 2, 128, False), Stack(c1, b1, 128),
            DepthWise(c1, c2, 2, 256, False), Stack(c2, b2, 256),
            DepthWise(c2, c2, 2, 512, False), Stack(c2, b3, 256),
        ])
        self.conv_sep = Block(c2, 512, 1)
        self.features = Gdc(emb)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.features(self.conv_sep(x))


def cmd_make(a):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = settle(MobileFaceNet(a.arch), max(a.batch, 2), 3, gen)
    x = torch.rand(a.batch, 3, 112, 112, generator=gen) * 2 - 1
    with torch.no_grad():
        emb = model(x)
    save_tensors(model.state_dict(), a.weights)
    save_tensors({"input": x, "embedding": emb}, a.io)
    print(f"{a.arch}: {len(model.state_dict())} tensors, max |embedding| {emb.abs().max().item():.4g}")


def cmd_embed(a):
    model = MobileFaceNet(a.arch)
    model.load_state_dict(load_tensors(a.weights), strict=True)
    with torch.no_grad():
        emb = model.eval()(load_tensors(a.io)["input"])
    save_tensors({"embedding": emb}, a.out)
    print(f"{a.arch}: loaded strictly, embedded {emb.shape[0]} images")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    make = sub.add_parser("make")
    make.add_argument("--seed", type=int, default=1)
    make.add_argument("--batch", type=int, default=2)
    make.add_argument("--weights", required=True)
    make.add_argument("--io", required=True)
    embed = sub.add_parser("embed")
    embed.add_argument("--weights", required=True)
    embed.add_argument("--io", required=True)
    embed.add_argument("--out", required=True)
    for p in (make, embed):
        p.add_argument("--arch", choices=sorted(SHAPES), default="mbf")
    a = ap.parse_args()
    {"make": cmd_make, "embed": cmd_embed}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
