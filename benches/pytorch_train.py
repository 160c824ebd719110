#!/usr/bin/env python3
"""The training step of `trainer bench train`, in PyTorch: torchvision ResNet minus fc,
dropout 0.4 + linear to 512 + L2 normalisation (for arcface_torch's backbones, whose output is
the embedding, L2-normalised: `mbf`/`mbf_large` the MobileFaceNet twin `mbf_twin.py`,
`iresnet*` the IResNet twin `iresnet_twin.py` (dropout 0.4 before its fc), `vit_t/s/b` the ViT
twin `vit_twin.py` with drop path 0.1 and mask ratio 0.1, as trainer's defaults), ArcFace (s=64, m=0.5, insightface's
fallback), cross-entropy, backward, SGD (momentum 0.9, weight decay 5e-4) on one fixed
synthetic batch. Prints the median images/s over the timed steps, in the same format as
the Rust benchmark.

    python benches/pytorch_train.py --arch resnet50 --size 112 --batch-size 16 --threads 2
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torchvision_resnet import resnet  # noqa: E402


class FrModel(torch.nn.Module):
    def __init__(self, arch, classes, emb_dim=512, s=64.0, m=0.5):
        super().__init__()
        self.embeds = arch in ("mbf", "mbf_large") or arch.startswith(("iresnet", "vit_"))
        if arch in ("mbf", "mbf_large"):
            from mbf_twin import MobileFaceNet
            self.backbone = MobileFaceNet(arch, emb_dim)
        elif arch.startswith("iresnet"):
            from iresnet_twin import IResNet
            self.backbone = IResNet(int(arch[len("iresnet"):]), emb_dim, dropout=0.4)
        elif arch.startswith("vit_"):
            from vit_twin import VisionTransformer
            self.backbone = VisionTransformer(arch, emb_dim)
        else:
            self.backbone = resnet(arch)
            out_dim = 2048 if arch in ("resnet50", "resnet101") else 512
            self.dropout = torch.nn.Dropout(0.4)
            self.fc = torch.nn.Linear(out_dim, emb_dim)
        self.arcface = torch.nn.Parameter(torch.normal(0, 0.01, (classes, emb_dim)))
        self.s, self.m = s, m

    def forward(self, x, labels):
        features = self.backbone(x)
        emb = F.normalize(features if self.embeds else self.fc(self.dropout(features)))
        cos = (emb @ F.normalize(self.arcface).t()).clamp(-1, 1)
        target = cos.gather(1, labels[:, None])
        sin = (1 - target * target).clamp_min(1e-12).sqrt()
        with_margin = target * math.cos(self.m) - sin * math.sin(self.m)
        fallback = target - self.m * math.sin(self.m)
        margin = torch.where(target > math.cos(math.pi - self.m), with_margin, fallback)
        logits = cos.scatter_add(1, labels[:, None], margin - target) * self.s
        return F.cross_entropy(logits, labels)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", nargs="?", const="fp16", choices=["fp16", "bf16"], help="CUDA autocast (alone: fp16)")
    ap.add_argument("--channels-last", action="store_true", help="NHWC images and weights")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = FrModel(a.arch, a.classes).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch_size, 3, a.size, a.size, device=dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    labels = (torch.arange(a.batch_size) % a.classes).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times, phases, loss_value = [], ([], [], []), float("nan")
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            cpu0 = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad()
        dtype = torch.bfloat16 if a.amp == "bf16" else torch.float16
        with torch.autocast("cuda", dtype=dtype, enabled=bool(a.amp) and dev.type == "cuda"):
            loss = model(x, labels)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        loss_value = loss.item()  # also waits for the device
        if i >= a.warmup:
            t3 = time.perf_counter()
            times.append(t3 - t0)
            for v, d in zip(phases, (t1 - t0, t2 - t1, t3 - t2)):
                v.append(d)
    cpu = time.process_time() - cpu0
    med = statistics.median(times)
    print(f"bench train (pytorch {torch.__version__}): arch={a.arch} size={a.size} batch={a.batch_size} "
          f"classes={a.classes} device={a.device} threads={a.threads} amp={a.amp} channels_last={a.channels_last}")
    print(f"median step {med * 1e3:.1f} ms over {len(times)} steps ({a.warmup} warm-up), "
          f"{a.batch_size / med:.2f} images/s, last loss {loss_value:.3f}")
    best = min(times)
    print(f"best step {best * 1e3:.1f} ms, {a.batch_size / best:.2f} images/s")
    images = a.batch_size * len(times)
    print(f"cpu time {cpu / images * 1e3:.1f} ms per image ({images / cpu:.2f} images per cpu-second)")
    f, b, s = (statistics.median(v) * 1e3 for v in phases)
    print(f"median forward {f:.1f} ms, backward {b:.1f} ms, sgd {s:.1f} ms")


if __name__ == "__main__":
    main()
