#!/usr/bin/env python3
"""PyTorch twins of the three adaptive margin heads as their papers' reference code defines
them (AdaFace: mk-minchul/AdaFace `head.py`; MagFace: IrvingMeng/MagFace `MagLinear` with
easy_margin and `MagLoss`; CurricularFace: HuangYG123/CurricularFace `head/metrics.py`),
written independently from the formulas, for `model/margin_twin_test.rs`.

    margin_twin.py --kind adaface|magface|curricularface --io IN.safetensors --out OUT.safetensors
                   [--s 64] [--m M] [--h 0.333] [--alpha 0.01]
                   [--norms 10,110] [--margins 0.45,0.8] [--lam 35]

IN holds `weight` [C, D] (class centres as rows) and, for steps k = 0, 1, ..., `emb.k`
[N, D] (unnormalised embeddings) and `labels.k` [N] (int64). Each step runs the head
forward with its running statistics as the previous steps left them, takes the mean
cross-entropy (MagFace: plus lambda_g times the mean of g(a)) and its gradients; the
centres are not updated. OUT holds per step `loss.k`, `grad_emb.k`, `grad_weight.k` and
`state.k` (the running statistics after the step: AdaFace's batch mean and std,
CurricularFace's t; empty for MagFace).

Exit status: 0 ok, 1 error, 3 PyTorch is not installed."""
import argparse
import math
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("PyTorch is not installed for this python", file=sys.stderr)
    sys.exit(3)

from iresnet_twin import load_tensors, save_tensors


def unit_rows(x):
    return x / x.norm(dim=1, keepdim=True)


def one_hot(labels, classes):
    return torch.zeros(labels.shape[0], classes).scatter(1, labels.view(-1, 1), 1.0).bool()


class AdaFace:
    """Norm-adaptive margin: the norm, standardised by running batch statistics, scales an
    angular and an additive part of the margin m."""

    def __init__(self, a):
        self.s, self.m, self.h, self.alpha, self.eps = a.s, a.m, a.h, a.alpha, 1e-3
        self.mean, self.std = torch.tensor([20.0]), torch.tensor([100.0])

    def loss(self, emb, weight, labels):
        norms = emb.norm(dim=1, keepdim=True)
        cos = unit_rows(emb) @ unit_rows(weight).t()
        cos = cos.clamp(-1 + self.eps, 1 - self.eps)
        z = norms.clamp(0.001, 100).detach()
        with torch.no_grad():
            self.mean = self.alpha * z.mean() + (1 - self.alpha) * self.mean
            self.std = self.alpha * z.std() + (1 - self.alpha) * self.std
        r = ((z - self.mean) / (self.std + self.eps) * self.h).clamp(-1, 1)
        hot = one_hot(labels, cos.shape[1]).float()
        angle = (torch.acos(cos) - hot * (self.m * r)).clamp(self.eps, math.pi - self.eps)
        logits = torch.cos(angle) - hot * (self.m + self.m * r)
        return F.cross_entropy(self.s * logits, labels)

    def state(self):
        return torch.cat([self.mean.view(1), self.std.view(1)])


class MagFace:
    """Magnitude-aware margin m(a), linear in the clipped norm a, applied where cos > 0;
    plus lambda_g * g(a), g(a) = a / u_a^2 + 1 / a."""

    def __init__(self, a):
        self.s, self.lam = a.s, a.lam
        self.la, self.ua = a.norms
        self.lm, self.um = a.margins

    def loss(self, emb, weight, labels):
        a = emb.norm(dim=1, keepdim=True).clamp(self.la, self.ua)
        m = self.lm + (self.um - self.lm) * (a - self.la) / (self.ua - self.la)
        cos = (F.normalize(emb) @ F.normalize(weight).t()).clamp(-1, 1)
        phi = cos * torch.cos(m) - torch.sqrt(1 - cos * cos) * torch.sin(m)
        phi = torch.where(cos > 0, phi, cos)
        logits = torch.where(one_hot(labels, cos.shape[1]), phi, cos)
        g = a / self.ua**2 + 1 / a
        return F.cross_entropy(self.s * logits, labels) + self.lam * g.mean()

    def state(self):
        return torch.zeros(0)


class CurricularFace:
    """ArcFace on the target (cos(theta + m), past pi - m: cos - m sin m); negatives above
    cos(theta_y + m) become cos (t + cos), t a running mean of the target cosines."""

    def __init__(self, a):
        self.s, self.m = a.s, a.m
        self.t = torch.zeros(1)

    def loss(self, emb, weight, labels):
        cos = (unit_rows(emb) @ unit_rows(weight).t()).clamp(-1, 1)
        rows = torch.arange(cos.shape[0])
        target = cos[rows, labels].view(-1, 1)
        shifted = target * math.cos(self.m) - torch.sqrt(1 - target * target) * math.sin(self.m)
        fallback = target - self.m * math.sin(self.m)
        final = torch.where(target > math.cos(math.pi - self.m), shifted, fallback)
        with torch.no_grad():
            self.t = 0.01 * target.mean() + 0.99 * self.t
        hard = cos > shifted.detach()
        out = torch.where(hard, cos * (self.t + cos), cos)
        out = torch.where(one_hot(labels, cos.shape[1]), final, out)
        return F.cross_entropy(self.s * out, labels)

    def state(self):
        return self.t.view(1).clone()


def pair(text):
    low, high = (float(v) for v in text.split(","))
    return low, high


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=["adaface", "magface", "curricularface"])
    p.add_argument("--io", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--s", type=float, default=64.0)
    p.add_argument("--m", type=float, default=None)
    p.add_argument("--h", type=float, default=0.333)
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--norms", type=pair, default=(10.0, 110.0))
    p.add_argument("--margins", type=pair, default=(0.45, 0.8))
    p.add_argument("--lam", type=float, default=35.0)
    a = p.parse_args()
    if a.m is None:
        a.m = 0.4 if a.kind == "adaface" else 0.5
    head = {"adaface": AdaFace, "magface": MagFace, "curricularface": CurricularFace}[a.kind](a)
    io = load_tensors(a.io)
    weight = io["weight"].float().clone().requires_grad_(True)
    out, k = {}, 0
    while f"emb.{k}" in io:
        emb = io[f"emb.{k}"].float().clone().requires_grad_(True)
        weight.grad = None
        loss = head.loss(emb, weight, io[f"labels.{k}"].long())
        loss.backward()
        out[f"loss.{k}"] = loss.detach().view(1)
        out[f"grad_emb.{k}"] = emb.grad
        out[f"grad_weight.{k}"] = weight.grad
        if head.state().numel():
            out[f"state.{k}"] = head.state().float()
        k += 1
    save_tensors(out, a.out)
    print(f"{a.kind}: {k} steps, losses {[round(out[f'loss.{i}'].item(), 6) for i in range(k)]}")


if __name__ == "__main__":
    main()
