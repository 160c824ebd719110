"""torchvision's ResNet without its fc (the pooled features), or, where torchvision is not
installed, a definition with the same layout, names and init (torchvision's BasicBlock /
Bottleneck v1.5: stride on the 3x3 conv)."""
import torch
from torch import nn

LAYOUTS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]),
           "resnet50": ("bottleneck", [3, 4, 6, 3]), "resnet101": ("bottleneck", [3, 4, 23, 3])}


def resnet(arch, require_torchvision=False):
    try:
        import torchvision
        model = getattr(torchvision.models, arch)(weights=None)
    except ImportError:
        if require_torchvision:
            raise
        model = _ResNet(*LAYOUTS[arch])
    model.fc = nn.Identity()
    return model


class _Block(nn.Module):
    def __init__(self, kind, c_in, width, stride):
        super().__init__()
        expansion = 1 if kind == "basic" else 4
        c_out = width * expansion
        if kind == "basic":
            shapes = [(c_in, width, 3, stride), (width, width, 3, 1)]
        else:
            shapes = [(c_in, width, 1, 1), (width, width, 3, stride), (width, c_out, 1, 1)]
        for i, (ci, co, k, s) in enumerate(shapes, 1):
            setattr(self, f"conv{i}", nn.Conv2d(ci, co, k, s, k // 2, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(co))
        self.n = len(shapes)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = x
        for i in range(1, self.n + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y))
            if i < self.n:
                y = torch.relu_(y)
        return torch.relu_(y + (x if self.downsample is None else self.downsample(x)))


class _ResNet(nn.Module):
    def __init__(self, kind, blocks):
        super().__init__()
        expansion = 1 if kind == "basic" else 4
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for s, (n, width) in enumerate(zip(blocks, [64, 128, 256, 512])):
            layer = []
            for b in range(n):
                layer.append(_Block(kind, c_in, width, 2 if s > 0 and b == 0 else 1))
                c_in = width * expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(torch.relu_(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))
