#!/usr/bin/env python3
"""Checks that a backbone saved by `trainer` loads into torchvision's ResNet and computes
the same features. FILE is a safetensors file of the VarStore (`backbone.` prefix optional);
with --io IO.safetensors (tensors `input` and `output`) the eval-mode features of `input`
must match `output`.

    python benches/check_torchvision.py weights.safetensors --arch resnet18 --io io.safetensors

Exit status: 0 ok, 1 mismatch, 3 torchvision is not installed."""
import argparse
import json
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_resnet import resnet  # noqa: E402

DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


def read_safetensors(path):
    """The format is a little-endian u64 header length, a JSON header, then raw data."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[start:end]), dtype=DTYPES[meta["dtype"]])
        out[name] = t.reshape(meta["shape"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--io")
    a = ap.parse_args()
    try:
        model = resnet(a.arch, require_torchvision=True)
    except ImportError:
        print("torchvision is not installed: cannot check", file=sys.stderr)
        return 3
    state = read_safetensors(a.file)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    model.fc = torch.nn.Linear(1, 1)  # so strict loading reports exactly the missing fc
    result = model.load_state_dict(state, strict=False)
    missing = sorted(result.missing_keys)
    if missing != ["fc.bias", "fc.weight"] or result.unexpected_keys:
        print(f"MISMATCH: missing {missing}, unexpected {result.unexpected_keys}")
        return 1
    model.fc = torch.nn.Identity()
    print(f"loaded {len(state)} tensors into torchvision {a.arch} (missing only fc)")
    if a.io:
        io = read_safetensors(a.io)
        with torch.no_grad():
            got = model.eval()(io["input"])
        err = (got - io["output"]).abs().max().item()
        scale = io["output"].abs().max().item()
        print(f"features max abs difference {err:.3g} (max |feature| {scale:.3g})")
        if not err <= 1e-4 * max(scale, 1.0):
            print("MISMATCH: features differ")
            return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
