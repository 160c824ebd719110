#!/usr/bin/env python3
"""Converts a model written by `trainer export` (TorchScript) to ONNX, for ONNX Runtime.

    python launch/export_onnx.py model.pt model.onnx [--size SIZE] [--opset 17]

Input `input`: float32 [N, 3, size, size], RGB, (x - 127.5) / 127.5, N free (dynamic
batch); the size is the one `trainer export` stored in the file (its extra file
`trainer.json`); `--size` is needed only for a TorchScript file without it, and must agree
with it otherwise. Output `embedding`: float32 [N, emb_dim], not normalised. Needs PyTorch and the
`onnx` package; when `onnxruntime` is installed too, the ONNX model is run on a batch of 3
and compared with the TorchScript model.
"""
import argparse
import json
import sys

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="TorchScript file from `trainer export`")
    p.add_argument("onnx", help="ONNX file to write")
    p.add_argument("--size", type=int, help="input side the model was trained at (default: the one the file records)")
    p.add_argument("--opset", type=int, default=17)
    args = p.parse_args()

    extra = {"trainer.json": ""}
    model = torch.jit.load(args.model, map_location="cpu", _extra_files=extra).eval()
    stored = json.loads(extra["trainer.json"]).get("input_size") if extra["trainer.json"] else None
    if stored is None and args.size is None:
        sys.exit(f"{args.model} does not record its input size (it was not written by `trainer export`): give --size")
    if stored is not None and args.size is not None and args.size != stored:
        sys.exit(f"--size {args.size}: {args.model} was trained at {stored} px (from its trainer.json); drop --size")
    args.size = stored if stored is not None else args.size
    example = torch.zeros(2, 3, args.size, args.size)
    # The TorchScript-based exporter takes a ScriptModule as it is.
    torch.onnx.export(
        model, (example,), args.onnx,
        input_names=["input"], output_names=["embedding"],
        dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=args.opset, dynamo=False,
    )
    import onnx
    onnx.checker.check_model(onnx.load(args.onnx))
    report = f"wrote {args.onnx} (input [N, 3, {args.size}, {args.size}], opset {args.opset}, dynamic batch)"
    try:
        import onnxruntime
    except ImportError:
        print(report + "; onnxruntime is not installed, so it was not run")
        return 0
    x = torch.rand(3, 3, args.size, args.size) * 2 - 1
    with torch.no_grad():
        want = model(x).numpy()
    session = onnxruntime.InferenceSession(args.onnx, providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"input": x.numpy()})[0]
    diff = float(abs(got - want).max())
    print(f"{report}; ONNX Runtime matches TorchScript on a batch of 3 (max abs diff {diff:.2e})")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
