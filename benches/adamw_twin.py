#!/usr/bin/env python3
"""torch.optim.AdamW driven step by step with the parameters, gradients and learning rates
`trainer`'s optimiser saw (`crates/torch/src/optim/twin_test.rs`), so the two can be compared
after every step.

    adamw_twin.py --io IO.safetensors --out OUT.safetensors

IO holds `init.<p>` (each parameter's first value), `group.<p>` (its group, 0-dim int64),
`grad.<step>.<p>` (absent: the parameter has no gradient that step, as PyTorch's None),
`lr` ([steps, groups] float64: each group's rate in effect per step), `wd` ([groups]),
`betas` ([2]) and `eps` ([1]). OUT holds `param.<step>.<p>` after every step and the final
`exp_avg.<p>`, `exp_avg_sq.<p>` and `step.<p>`.

Exit status: 0 ok, 1 error, 3 PyTorch is not installed."""
import argparse
import sys

try:
    import torch
except ImportError:
    print("PyTorch is not installed for this python", file=sys.stderr)
    sys.exit(3)

from iresnet_twin import load_tensors, save_tensors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--io", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    io = load_tensors(args.io)
    names = sorted(k[len("init."):] for k in io if k.startswith("init."))
    params = {n: io[f"init.{n}"].clone().requires_grad_(True) for n in names}
    lrs, wds = io["lr"], io["wd"]
    groups = [{"params": [params[n] for n in names if int(io[f"group.{n}"]) == g], "lr": float(lrs[0, g]),
               "weight_decay": float(wds[g])} for g in range(len(wds))]
    betas = (float(io["betas"][0]), float(io["betas"][1]))
    opt = torch.optim.AdamW(groups, betas=betas, eps=float(io["eps"][0]))
    out = {}
    for step in range(lrs.shape[0]):
        for g, group in enumerate(opt.param_groups):
            group["lr"] = float(lrs[step, g])
        for n in names:
            grad = io.get(f"grad.{step}.{n}")
            params[n].grad = None if grad is None else grad.clone()
        opt.step()
        for n in names:
            out[f"param.{step}.{n}"] = params[n].detach().clone()
    for n in names:
        state = opt.state[params[n]]
        out[f"exp_avg.{n}"] = state["exp_avg"]
        out[f"exp_avg_sq.{n}"] = state["exp_avg_sq"]
        out[f"step.{n}"] = state["step"].to(torch.float64).reshape([])
    save_tensors(out, args.out)


if __name__ == "__main__":
    main()
