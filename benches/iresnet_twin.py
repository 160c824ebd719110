#!/usr/bin/env python3
"""A PyTorch twin of insightface's IResNet (arcface_torch `backbones/iresnet.py`): the same
module names, shapes, initialisation and forward pass, written independently, so weights
can be passed between it and `trainer`'s `model::iresnet` and their embeddings compared.

    iresnet_twin.py make  --depth 18 --seed 1 --batch 2 --weights W.safetensors --io IO.safetensors
    iresnet_twin.py embed --depth 18 --weights W.safetensors --io IO.safetensors --out OUT.safetensors
    iresnet_twin.py count --depth 50
    iresnet_twin.py layout --depth 200

`make` builds a seeded network, gives it non-trivial BatchNorm statistics and affine values,
and writes its state dict and an input batch with the network's eval-mode embeddings
(`input`, `embedding`). `embed` loads a state dict strictly (every name and shape must
match) and writes the eval-mode `embedding` of IO's `input`. `count` prints parameter counts
as JSON; `layout` prints the state dict's names with their shapes and dtypes as JSON (no
forward pass, so it is cheap at any depth).

Exit status: 0 ok, 1 error, 3 PyTorch is not installed."""
import argparse
import json
import struct
import sys

try:
    import torch
    from torch import nn
except ImportError:
    print("PyTorch is not installed for this python", file=sys.stderr)
    sys.exit(3)

BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 14, 3], 100: [3, 13, 30, 3], 200: [6, 26, 60, 6]}
WIDTHS = [64, 128, 256, 512]


def conv(c_in, c_out, k, stride=1):
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)


class IBasicBlock(nn.Module):
    """BN, conv, BN, PReLU, conv (strided), BN; plus the shortcut, nothing after the sum."""

    def __init__(self, c_in, width, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.conv1 = conv(c_in, width, 3)
        self.bn2 = nn.BatchNorm2d(width, eps=1e-5)
        self.prelu = nn.PReLU(width)
        self.conv2 = conv(width, width, 3, stride)
        self.bn3 = nn.BatchNorm2d(width, eps=1e-5)
        self.downsample = None
        if stride != 1 or c_in != width:
            self.downsample = nn.Sequential(conv(c_in, width, 1, stride), nn.BatchNorm2d(width, eps=1e-5))

    def forward(self, x):
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    def __init__(self, depth, emb_dim=512, dropout=0.0):
        super().__init__()
        self.conv1 = conv(3, 64, 3)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        c_in = 64
        for i, (n, width) in enumerate(zip(BLOCKS[depth], WIDTHS)):
            blocks = []
            for b in range(n):
                blocks.append(IBasicBlock(c_in, width, 2 if b == 0 else 1))
                c_in = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn2 = nn.BatchNorm2d(c_in, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in * 7 * 7, emb_dim)
        self.features = nn.BatchNorm1d(emb_dim, eps=1e-5)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


# safetensors: the library when installed, else this minimal reader/writer of the format
# (u64 header length, JSON header, raw little-endian data).
DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "F16": torch.float16}
NAMES = {v: k for k, v in DTYPES.items()}


def save_tensors(tensors, path):
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        from safetensors.torch import save_file
    except ImportError:
        header, blobs, offset = {}, [], 0
        for name, t in tensors.items():
            blob = t.numpy().tobytes()
            header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
            blobs.append(blob)
            offset += len(blob)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
        return
    save_file(tensors, path)


def load_tensors(path):
    try:
        from safetensors.torch import load_file
    except ImportError:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            data = f.read()
        out = {}
        for name, meta in header.items():
            if name != "__metadata__":
                start, end = meta["data_offsets"]
                t = torch.frombuffer(bytearray(data[start:end]), dtype=DTYPES[meta["dtype"]])
                out[name] = t.reshape(meta["shape"])
        return out
    return load_file(path)


def settle(model, batch, steps, gen):
    """Non-trivial values everywhere a state dict has them: random BN affine values, PReLU
    slopes and `features.bias`, then `steps` train-mode passes with a cumulative average,
    so the running statistics are those of real activations (eval stays well scaled)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                if name != "features":
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
                m.momentum = None
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.0, 0.5, generator=gen)
        model.train()
        for _ in range(steps):
            model(torch.rand(batch, 3, 112, 112, generator=gen) * 2 - 1)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = 0.1
    return model.eval()


def cmd_make(a):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = settle(IResNet(a.depth), max(a.batch, 2), a.warmup, gen)
    x = torch.rand(a.batch, 3, 112, 112, generator=gen) * 2 - 1
    with torch.no_grad():
        emb = model(x)
    save_tensors(model.state_dict(), a.weights)
    save_tensors({"input": x, "embedding": emb}, a.io)
    print(f"iresnet{a.depth}: {len(model.state_dict())} tensors, max |embedding| {emb.abs().max().item():.4g}")


def cmd_embed(a):
    model = IResNet(a.depth)
    model.load_state_dict(load_tensors(a.weights), strict=True)
    with torch.no_grad():
        emb = model.eval()(load_tensors(a.io)["input"])
    save_tensors({"embedding": emb}, a.out)
    print(f"iresnet{a.depth}: loaded strictly, embedded {emb.shape[0]} images")


def cmd_count(a):
    model = IResNet(a.depth)
    params = list(model.parameters())
    print(json.dumps({
        "depth": a.depth,
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "state_dict_tensors": len(model.state_dict()),
    }))


def cmd_layout(a):
    state = IResNet(a.depth).state_dict()
    print(json.dumps({name: [list(t.shape), NAMES[t.dtype]] for name, t in state.items()}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    make = sub.add_parser("make")
    make.add_argument("--seed", type=int, default=1)
    make.add_argument("--batch", type=int, default=2)
    make.add_argument("--warmup", type=int, default=3)
    make.add_argument("--weights", required=True)
    make.add_argument("--io", required=True)
    embed = sub.add_parser("embed")
    embed.add_argument("--weights", required=True)
    embed.add_argument("--io", required=True)
    embed.add_argument("--out", required=True)
    count = sub.add_parser("count")
    layout = sub.add_parser("layout")
    for p in (make, embed, count, layout):
        p.add_argument("--depth", type=int, choices=sorted(BLOCKS), default=18)
    a = ap.parse_args()
    {"make": cmd_make, "embed": cmd_embed, "count": cmd_count, "layout": cmd_layout}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
