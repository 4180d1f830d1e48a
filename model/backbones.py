"""Backbones split into convolution groups, so that two branches can exchange feature maps
between groups.

Each group is an `nn.Sequential` whose children keep torchvision's own names, so a torchvision
state dict maps onto a branch by renaming `<child>.<rest>` to `groups.<g>.<child>.<rest>`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Callable

from torch import nn
from torchvision import models


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[], nn.Module]          # an untrained torchvision model
    source_prefix: str                      # prefix of the conv part in torchvision's state dict
    groups: tuple[tuple[str, ...], ...]     # child names (under source_prefix) per group
    channels: tuple[int, ...]               # output channels of each group
    pool_size: int = 1                      # side of the adaptive average pool before the FC layers
    fc_width: int = 4096
    # the head a network on this backbone gets unless told: "fc3" (the patent's three FC layers,
    # for vgg16 whose fc1/fc2 come pretrained) or "linear" (benchmarks/ablation.py: three randomly
    # started FC layers with dropout 0.5 cost resnet18 most of its emotion accuracy on small sets)
    head: str = "linear"
    # torchvision classifier layer -> our head layer, for layers whose shapes match ours
    head_source: dict = field(default_factory=dict)
    weights: models.WeightsEnum | None = None   # torchvision's published ImageNet weights (URL and hash)


def _vgg16_groups() -> tuple[tuple[str, ...], ...]:
    # VGG16 `features` indices; each block ends with its MaxPool (2, 2, 3, 3, 3 convs).
    bounds = [(0, 5), (5, 10), (10, 17), (17, 24), (24, 31)]
    return tuple(tuple(str(i) for i in range(a, b)) for a, b in bounds)


SPECS: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        name="vgg16",
        build=lambda: models.vgg16(weights=None),
        source_prefix="features.",
        groups=_vgg16_groups(),
        channels=(64, 128, 256, 512, 512),
        pool_size=7,
        fc_width=4096,
        head_source={"classifier.0": "fc1", "classifier.3": "fc2"},
        head="fc3",
        weights=models.VGG16_Weights.IMAGENET1K_V1,
    ),
    "resnet18": BackboneSpec(
        name="resnet18",
        build=lambda: models.resnet18(weights=None),
        source_prefix="",
        # the stem joins the first stage: stride-4 features before layer1 are not a stage output
        groups=(("conv1", "bn1", "relu", "maxpool", "layer1"), ("layer2",), ("layer3",), ("layer4",)),
        channels=(64, 128, 256, 512),
        fc_width=1024,
        weights=models.ResNet18_Weights.IMAGENET1K_V1,
    ),
    "mobilenet_v3_small": BackboneSpec(
        name="mobilenet_v3_small",
        build=lambda: models.mobilenet_v3_small(weights=None),
        source_prefix="features.",
        # split where the spatial size halves: 56, 28, 14 and 7 pixels at a 224 input
        groups=(("0", "1"), ("2", "3"), ("4", "5", "6", "7", "8"), ("9", "10", "11", "12")),
        channels=(16, 24, 48, 576),
        fc_width=1024,
        weights=models.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
    ),
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(SPECS)}") from None


def build_groups(spec: BackboneSpec) -> nn.ModuleList:
    """The backbone's convolution groups, each keeping torchvision's child names."""
    source = spec.build()
    container = source.get_submodule(spec.source_prefix.rstrip(".")) if spec.source_prefix else source
    children = dict(container.named_children())
    return nn.ModuleList(
        nn.Sequential(OrderedDict((name, children[name]) for name in group)) for group in spec.groups
    )

