#!/usr/bin/env python3
"""A PyTorch twin of arcface_torch's Vision Transformer (`backbones/vit.py`, `get_model("vit_t"
| "vit_s" | "vit_b")`): the same module names, shapes and forward pass, written independently,
so weights can be passed between it and `trainer`'s `model::vit` and embeddings compared.

    vit_twin.py make   --arch vit_t --seed 1 --batch 2 --weights W.safetensors --io IO.safetensors
    vit_twin.py embed  --arch vit_t --weights W.safetensors --io IO.safetensors --out OUT.safetensors
    vit_twin.py layout --arch vit_b

As `mbf_twin.py`: `make` writes a settled network's state dict and an input batch with its
eval-mode embeddings; `embed` loads a state dict strictly and embeds IO's `input`; `layout`
prints the state dict's names, shapes and dtypes as JSON (no forward pass).

The structure: a 9×9 conv with stride 9 cuts 112 px into 12×12 = 144 tokens (the last 4 rows
and columns unread), plus a learned position embedding; pre-norm blocks (LayerNorm,
multi-head attention with a bias-free qkv and f32 scores, LayerNorm, MLP ×4 with ReLU6), each
residual branch dropped per sample in training (stochastic depth rising linearly to
`drop_path`); in training a random `mask_ratio` of each image's tokens skips the blocks and
the learned `mask_token` takes their place after the final LayerNorm; the head `feature`
flattens all tokens: Linear (no bias), BatchNorm1d (eps 2e-5), Linear to the embedding (no
bias), BatchNorm1d (eps 2e-5).

Exit status: 0 ok, 1 error, 3 PyTorch is not installed."""
import argparse
import json
import sys

try:
    import torch
    from torch import nn
except ImportError:
    print("PyTorch is not installed for this python", file=sys.stderr)
    sys.exit(3)

from iresnet_twin import NAMES, load_tensors, save_tensors, settle

# (width, blocks, heads); arcface_torch trains all three with drop path 0.1 and mask ratio 0.1.
SHAPES = {"vit_t": (256, 12, 8), "vit_s": (512, 12, 8), "vit_b": (512, 24, 8)}
SIDE, PATCH = 112, 9
TOKENS = (SIDE // PATCH) ** 2


class PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH, PATCH)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        with torch.autocast(x.device.type, enabled=False):
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) / (c // self.heads) ** 0.5
            mixed = torch.matmul(scores.softmax(-1), v.float()).transpose(1, 2).reshape(b, n, c)
        return self.proj(mixed)


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def drop_branch(y, p, training):
    if not training or p == 0:
        return y
    keep = torch.empty(y.shape[0], 1, 1, dtype=y.dtype, device=y.device).bernoulli_(1 - p)
    return y * keep / (1 - p)


class Block(nn.Module):
    def __init__(self, dim, heads, drop_path):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim)
        self.drop_path = drop_path

    def forward(self, x):
        x = x + drop_branch(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_branch(self.mlp(self.norm2(x)), self.drop_path, self.training)


class VisionTransformer(nn.Module):
    def __init__(self, arch, emb=512, drop_path=0.1, mask_ratio=0.1):
        super().__init__()
        dim, depth, heads = SHAPES[arch]
        self.dim, self.mask_ratio = dim, mask_ratio
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        rates = [drop_path * i / (depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList([Block(dim, heads, r) for r in rates])
        self.norm = nn.LayerNorm(dim)
        self.feature = nn.Sequential(
            nn.Linear(TOKENS * dim, dim, bias=False), nn.BatchNorm1d(dim, eps=2e-5),
            nn.Linear(dim, emb, bias=False), nn.BatchNorm1d(emb, eps=2e-5))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x) + self.pos_embed
        n = x.shape[0]
        masking = self.training and self.mask_ratio > 0
        if masking:
            order = torch.rand(n, TOKENS, device=x.device).argsort(1)
            kept = int(TOKENS * (1 - self.mask_ratio))
            x = x.gather(1, order[:, :kept, None].expand(-1, -1, self.dim))
        for block in self.blocks:
            x = block(x)
        x = self.norm(x.float())
        if masking:
            filler = self.mask_token.expand(n, TOKENS - kept, -1).to(x.dtype)
            x = torch.cat([x, filler], 1).gather(1, order.argsort(1)[:, :, None].expand(-1, -1, self.dim))
        return self.feature(x.reshape(n, TOKENS * self.dim))


def settled(arch, batch, gen):
    """Random LayerNorm affine values and Linear biases, then `settle`'s BN statistics."""
    model = VisionTransformer(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.1, generator=gen)
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.02, generator=gen)
    return settle(model, batch, 3, gen)


def cmd_make(a):
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    model = settled(a.arch, max(a.batch, 2), gen)
    x = torch.rand(a.batch, 3, SIDE, SIDE, generator=gen) * 2 - 1
    with torch.no_grad():
        emb = model(x)
    save_tensors(model.state_dict(), a.weights)
    save_tensors({"input": x, "embedding": emb}, a.io)
    print(f"{a.arch}: {len(model.state_dict())} tensors, max |embedding| {emb.abs().max().item():.4g}")


def cmd_embed(a):
    model = VisionTransformer(a.arch)
    model.load_state_dict(load_tensors(a.weights), strict=True)
    with torch.no_grad():
        emb = model.eval()(load_tensors(a.io)["input"])
    save_tensors({"embedding": emb}, a.out)
    print(f"{a.arch}: loaded strictly, embedded {emb.shape[0]} images")


def cmd_layout(a):
    with torch.device("meta"):
        model = VisionTransformer(a.arch)
    tensors = {name: [list(t.shape), NAMES[t.dtype]] for name, t in model.state_dict().items()}
    print(json.dumps({"trainable": sum(p.numel() for p in model.parameters()), "tensors": tensors}))


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
    layout = sub.add_parser("layout")
    for p in (make, embed, layout):
        p.add_argument("--arch", choices=sorted(SHAPES), default="vit_t")
    a = ap.parse_args()
    {"make": cmd_make, "embed": cmd_embed, "layout": cmd_layout}[a.cmd](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
