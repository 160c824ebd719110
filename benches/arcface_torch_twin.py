#!/usr/bin/env python3
"""arcface_torch backbone files, the PyTorch side: writes real `torch.save` files of a
backbone's state dict (and broken ones) for `trainer import arcface-torch`, and checks what
`trainer export` gives back, with arcface_torch's own loading: `torch.load` (weights_only,
PyTorch's default) and a strict `load_state_dict`.

    arcface_torch_twin.py save  --arch iresnet18 --emb-dim 64 --seed 5 --dir D
    arcface_torch_twin.py check --arch iresnet18 --emb-dim 64 --reference D/backbone.pth \
        [--torchscript model.pt] [--pth exported.pth]

`save` writes D/backbone.pth (a settled network's state dict), D/checkpoint.pth (arcface_torch's
training checkpoint around it), and the bad inputs D/not_a_state_dict.pth, D/extra.pth (one more
tensor), D/shape.pth (one tensor reshaped), D/double.pth (one tensor float64). `check` prints one JSON
line: the largest difference between the reference network's eval-mode embeddings and those of
the TorchScript file (our imported weights, traced by trainer) and of the exported `.pth`
loaded strictly into the twin, and whether the exported tensors equal the reference's bit for bit.

Exit status: 0 ok, 1 error, 3 PyTorch is not installed."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iresnet_twin import IResNet, settle  # noqa: E402  (exits 3 without PyTorch)

import torch  # noqa: E402


def build(arch, emb_dim):
    if arch.startswith("iresnet"):
        return IResNet(int(arch[len("iresnet"):]), emb_dim)
    if arch in ("mbf", "mbf_large"):
        from mbf_twin import MobileFaceNet
        return MobileFaceNet(arch, emb_dim)
    if arch.startswith("vit_"):
        from vit_twin import VisionTransformer
        return VisionTransformer(arch, emb_dim)
    raise SystemExit(f"no twin for --arch {arch}")


def cmd_save(a):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = settle(build(a.arch, a.emb_dim), 2, 2, gen)
    sd = model.state_dict()
    path = lambda name: os.path.join(a.dir, name)  # noqa: E731
    torch.save(sd, path("backbone.pth"))
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "nesterov": False, "params": [0, 1]}]}
    torch.save({"epoch": 3, "global_step": 1200, "state_dict_backbone": sd, "state_optimizer": optimizer},
               path("checkpoint.pth"))
    if "fc.weight" not in sd:  # the broken files below are IResNet-shaped
        return print(f"{a.arch}: {len(sd)} tensors saved in {a.dir}")
    torch.save({"epoch": 3, "global_step": 1200}, path("not_a_state_dict.pth"))
    extra = dict(sd)
    extra["head.weight"] = torch.zeros(3, 2)
    torch.save(extra, path("extra.pth"))
    shape = dict(sd)
    shape["fc.weight"] = sd["fc.weight"][:, :-1].clone()
    torch.save(shape, path("shape.pth"))
    double = dict(sd)
    double["bn1.weight"] = sd["bn1.weight"].double()
    torch.save(double, path("double.pth"))
    print(f"{a.arch}: {len(sd)} tensors saved in {a.dir}")


def embeddings(model, x):
    with torch.no_grad():
        return model.eval()(x)


def cmd_check(a):
    reference = build(a.arch, a.emb_dim)
    reference.load_state_dict(torch.load(a.reference), strict=True)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 112, 112, generator=gen) * 2 - 1
    want = embeddings(reference, x)
    out = {"max_abs_embedding": want.abs().max().item()}
    if a.torchscript:
        traced = torch.jit.load(a.torchscript)
        out["torchscript_diff"] = (embeddings(traced, x) - want).abs().max().item()
    if a.pth:
        exported = torch.load(a.pth)
        twin = build(a.arch, a.emb_dim)
        twin.load_state_dict(exported, strict=True)
        out["pth_diff"] = (embeddings(twin, x) - want).abs().max().item()
        ref = reference.state_dict()
        out["pth_identical"] = sorted(exported) == sorted(ref) and all(
            exported[k].dtype == ref[k].dtype and torch.equal(exported[k], ref[k]) for k in ref)
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    save = sub.add_parser("save")
    save.add_argument("--seed", type=int, default=1)
    save.add_argument("--dir", required=True)
    check = sub.add_parser("check")
    check.add_argument("--reference", required=True)
    check.add_argument("--torchscript")
    check.add_argument("--pth")
    for p in (save, check):
        p.add_argument("--arch", default="iresnet18")
        p.add_argument("--emb-dim", type=int, default=512)
    a = ap.parse_args()
    {"save": cmd_save, "check": cmd_check}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
