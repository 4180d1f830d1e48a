"""The cross-branch two-task network of the patent (docs/developers/method.md, "The network").

Two branches read the same image: branch A classifies aesthetics, branch E emotion. After each
convolution group but the last, a cross-branch layer stacks both branches' feature maps
(2K channels) and feeds them to two 1x1 convolutions with K filters each: the first one's
output continues in branch A, the second one's in branch E.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .backbones import build_groups, get_spec
from .classes import DEFAULT_CLASSES, TASKS, check_classes

CROSS_INITS = ("identity", "random")
HEADS = ("fc3", "linear")   # the patent's three FC layers, or one linear layer


@dataclass(frozen=True)
class NetConfig:
    backbone: str = "vgg16"
    aesthetic_classes: tuple[str, ...] = DEFAULT_CLASSES["aesthetic"]
    emotion_classes: tuple[str, ...] = DEFAULT_CLASSES["emotion"]
    cross_branch: bool = True          # False: two independent branches, for comparison
    cross_init: str = "identity"       # "identity" (NDDR-style) or "random" (the patent)
    alpha: float = 0.9                 # identity init: weight of a branch's own half
    num_groups: int | None = None      # n: the first n convolution groups (None: all of them)
    fc_width: int | None = None        # None: the backbone's default (4096 for vgg16)
    dropout: float = 0.5
    head: str | None = None            # "fc3" or "linear"; None: the backbone's (model/backbones.py)

    def __post_init__(self):
        if self.head is None:
            object.__setattr__(self, "head", get_spec(self.backbone).head)
        check_classes({"aesthetic": self.aesthetic_classes, "emotion": self.emotion_classes})
        if self.cross_init not in CROSS_INITS:
            raise ValueError(f"cross_init must be one of {CROSS_INITS}, got {self.cross_init!r}")
        available = len(get_spec(self.backbone).groups)
        if self.num_groups is not None and not 2 <= self.num_groups <= available:
            raise ValueError(f"num_groups must lie in [2, {available}] for {self.backbone}, got {self.num_groups}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha}")

    @property
    def classes(self) -> dict[str, tuple[str, ...]]:
        return {"aesthetic": self.aesthetic_classes, "emotion": self.emotion_classes}

    @property
    def groups_used(self) -> int:
        return self.num_groups or len(get_spec(self.backbone).groups)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["aesthetic_classes"] = list(self.aesthetic_classes)
        data["emotion_classes"] = list(self.emotion_classes)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> NetConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("aesthetic_classes", "emotion_classes"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


class Branch(nn.Module):
    """One task's column: the backbone's convolution groups, then three FC layers."""

    def __init__(self, config: NetConfig, num_classes: int):
        super().__init__()
        spec = get_spec(config.backbone)
        n = config.groups_used
        width = config.fc_width or spec.fc_width
        self.groups = build_groups(spec)[:n]
        features = spec.channels[n - 1] * spec.pool_size ** 2
        if config.head == "linear":
            self.head = nn.Sequential(OrderedDict([
                ("pool", nn.AdaptiveAvgPool2d(spec.pool_size)),
                ("flatten", nn.Flatten(1)),
                ("fc", nn.Linear(features, num_classes)),
            ]))
            return
        self.head = nn.Sequential(OrderedDict([
            ("pool", nn.AdaptiveAvgPool2d(spec.pool_size)),
            ("flatten", nn.Flatten(1)),
            ("fc1", nn.Linear(features, width)),
            ("relu1", nn.ReLU(inplace=True)),
            ("drop1", nn.Dropout(config.dropout)),
            ("fc2", nn.Linear(width, width)),
            ("relu2", nn.ReLU(inplace=True)),
            ("drop2", nn.Dropout(config.dropout)),
            ("fc3", nn.Linear(width, num_classes)),
        ]))


class CrossBranchLayer(nn.Module):
    """Stacks group i of both branches (2K channels) and maps it back to K channels per branch."""

    def __init__(self, channels: int):
        super().__init__()
        self.to_a = nn.Conv2d(2 * channels, channels, kernel_size=1, stride=1, padding=0)
        self.to_e = nn.Conv2d(2 * channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, a: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stacked = torch.cat([a, e], dim=1)
        return self.to_a(stacked), self.to_e(stacked)

    @torch.no_grad()
    def init_identity(self, alpha: float) -> None:
        """Start as a weighted identity so the pretrained features pass through nearly unchanged
        (random 1x1 weights would scramble them; see docs/developers/method.md, "Known weak
        point")."""
        k = self.to_a.out_channels
        eye = torch.eye(k)
        for conv, own, other in ((self.to_a, slice(0, k), slice(k, 2 * k)),
                                 (self.to_e, slice(k, 2 * k), slice(0, k))):
            conv.weight.zero_()
            conv.weight[:, own, 0, 0] = alpha * eye
            conv.weight[:, other, 0, 0] = (1.0 - alpha) * eye
            conv.bias.zero_()


class CrossBranchNet(nn.Module):
    """Returns the logits of both tasks; `probabilities` applies the softmax.

    The softmax stays out of `forward` so the loss can use log-softmax, which is exact where
    log(softmax) underflows.
    """

    def __init__(self, config: NetConfig = NetConfig()):
        super().__init__()
        self.config = config
        spec = get_spec(config.backbone)
        self.branch_a = Branch(config, len(config.aesthetic_classes))
        self.branch_e = Branch(config, len(config.emotion_classes))
        if config.cross_branch:
            self.cross = nn.ModuleList(CrossBranchLayer(k) for k in spec.channels[:config.groups_used - 1])
            if config.cross_init == "identity":
                for layer in self.cross:
                    layer.init_identity(config.alpha)
        else:
            self.cross = nn.ModuleList()

    @property
    def num_groups(self) -> int:
        return len(self.branch_a.groups)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = e = images
        for i, (group_a, group_e) in enumerate(zip(self.branch_a.groups, self.branch_e.groups)):
            a, e = group_a(a), group_e(e)
            if i < len(self.cross):
                a, e = self.cross[i](a, e)
        return self.branch_a.head(a), self.branch_e.head(e)

    def probabilities(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self(images)
        return {task: torch.softmax(out.float(), dim=1) for task, out in zip(TASKS, logits)}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
