"""The cross-branch network (docs/developers/method.md, "The network" and "Known weak point").

VGG16 structure checks run on the meta device: shapes, layer counts and FLOPs come out exactly
as on the CPU, without building 2 x 138M parameters (several seconds per model on 2 cores).
Everything that needs real numbers (gradients, identity init) runs a small resnet18 on 64x64.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision import models

from model.backbones import get_spec
from model.loss import two_task_loss
from model.network import CrossBranchLayer, CrossBranchNet, NetConfig

SMALL = 64                      # input side for CPU forwards
VGG16_TWO_BRANCH_GFLOP = 63.5   # 2 x VGG16 (2 x 30.9) + 4 cross-branch layers (4 x 0.41)
GFLOP_TOLERANCE = 0.2


def meta_net(**kwargs) -> CrossBranchNet:
    with torch.device("meta"):
        return CrossBranchNet(NetConfig(**kwargs))


def cpu_net(**kwargs) -> CrossBranchNet:
    torch.manual_seed(0)
    return CrossBranchNet(NetConfig(**kwargs))


def group_output_channels(net: CrossBranchNet, branch: str, side: int, device: str) -> list[tuple[int, int]]:
    """(channels, spatial side) of each group's output in `branch`, read by forward hooks."""
    seen: dict[int, tuple[int, int]] = {}
    groups = getattr(net, branch).groups
    handles = [g.register_forward_hook(lambda m, i, o, idx=idx: seen.__setitem__(idx, (o.shape[1], o.shape[2])))
               for idx, g in enumerate(groups)]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(2, 3, side, side, device=device))
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(groups))]


# --- cross-branch layers: count and shapes --------------------------------------------------

CASES = [("vgg16", n, "meta") for n in (2, 3, 4, 5)] + [("resnet18", n, "cpu") for n in (2, 3, 4)]


@pytest.mark.parametrize("backbone,n,device", CASES)
def test_cross_branch_layers_are_n_minus_1_one_by_one_convs(backbone, n, device):
    kwargs = {"backbone": backbone, "num_groups": n, "fc_width": 16}
    net = meta_net(**kwargs) if device == "meta" else cpu_net(**kwargs)
    assert net.num_groups == n
    assert len(net.branch_a.groups) == len(net.branch_e.groups) == n
    assert len(net.cross) == n - 1

    side = 224 if device == "meta" else SMALL
    outs_a = group_output_channels(net, "branch_a", side, device)
    outs_e = group_output_channels(net, "branch_e", side, device)
    assert outs_a == outs_e
    # the channel counts the spec claims are the ones the groups really produce
    assert [c for c, _ in outs_a] == list(get_spec(backbone).channels[:n])

    for i, layer in enumerate(net.cross):
        k = outs_a[i][0]
        for conv in (layer.to_a, layer.to_e):
            assert isinstance(conv, nn.Conv2d)
            assert conv.in_channels == 2 * k
            assert conv.out_channels == k
            assert conv.kernel_size == (1, 1)
            assert conv.stride == (1, 1)
            assert conv.padding == (0, 0)
            assert tuple(conv.weight.shape) == (k, 2 * k, 1, 1)


def test_cross_branch_layer_keeps_spatial_size_and_feeds_next_group():
    net = cpu_net(backbone="resnet18", num_groups=3, fc_width=16).eval()
    seen = {}
    net.cross[0].register_forward_hook(lambda m, i, o: seen.__setitem__("cross0", (i, o)))
    net.branch_a.groups[1].register_forward_hook(lambda m, i, o: seen.__setitem__("a1", i[0]))
    net.branch_e.groups[1].register_forward_hook(lambda m, i, o: seen.__setitem__("e1", i[0]))
    with torch.no_grad():
        net(torch.randn(2, 3, SMALL, SMALL))
    (a_in, e_in), (a_out, e_out) = seen["cross0"]
    assert a_in.shape == a_out.shape == e_out.shape == (2, 64, 16, 16)
    # group 2 of each branch reads that branch's 1x1 conv output, not the raw group output
    assert torch.equal(seen["a1"], a_out)
    assert torch.equal(seen["e1"], e_out)
    assert not torch.equal(a_out, a_in)


def test_no_cross_branch_layers_when_switched_off():
    net = meta_net(backbone="vgg16", cross_branch=False)
    assert len(net.cross) == 0
    assert not any(k.startswith("cross.") for k in net.state_dict())


def test_vgg16_default_is_five_groups_of_2_2_3_3_3_convs_and_4096_fc():
    net = meta_net(backbone="vgg16")
    assert net.num_groups == 5 and len(net.cross) == 4
    for branch in (net.branch_a, net.branch_e):
        convs = [sum(isinstance(m, nn.Conv2d) for m in g) for g in branch.groups]
        assert convs == [2, 2, 3, 3, 3]
        assert all(isinstance(list(g)[-1], nn.MaxPool2d) for g in branch.groups)
        assert branch.head.fc1.in_features == 512 * 7 * 7
        assert branch.head.fc1.out_features == 4096
        assert branch.head.fc2.in_features == branch.head.fc2.out_features == 4096
    assert net.branch_a.head.fc3.out_features == 2
    assert net.branch_e.head.fc3.out_features == 8


# --- heads ---------------------------------------------------------------------------------

def test_head_output_shapes_default_classes():
    net = cpu_net(backbone="resnet18", fc_width=32).eval()
    with torch.no_grad():
        logits_a, logits_e = net(torch.randn(3, 3, SMALL, SMALL))
        probs = net.probabilities(torch.randn(3, 3, SMALL, SMALL))
    assert logits_a.shape == (3, 2)
    assert logits_e.shape == (3, 8)
    assert probs["aesthetic"].shape == (3, 2) and probs["emotion"].shape == (3, 8)
    assert torch.allclose(probs["aesthetic"].sum(1), torch.ones(3), atol=1e-6)
    assert torch.allclose(probs["emotion"].sum(1), torch.ones(3), atol=1e-6)


def test_head_output_shapes_custom_classes():
    net = cpu_net(backbone="mobilenet_v3_small", fc_width=32,
                  aesthetic_classes=("low", "mid", "high"),
                  emotion_classes=("calm", "joy", "anger", "fear")).eval()
    with torch.no_grad():
        logits_a, logits_e = net(torch.randn(2, 3, SMALL, SMALL))
    assert logits_a.shape == (2, 3)
    assert logits_e.shape == (2, 4)
    assert net.branch_a.head[-1].out_features == 3
    assert net.branch_e.head[-1].out_features == 4


# --- gradient flow through the cross-branch layers ------------------------------------------

def _grads_after(net: CrossBranchNet, task: str) -> None:
    net.train().zero_grad(set_to_none=True)
    torch.manual_seed(1)
    logits_a, logits_e = net(torch.randn(2, 3, SMALL, SMALL))
    target_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target_e = torch.zeros(2, 8)
    target_e[0, 3] = target_e[1, 6] = 1.0
    parts = two_task_loss(logits_a, logits_e, target_a, target_e, torch.ones(2), torch.ones(2))
    getattr(parts, task).backward()


def _grad_abs_sum(module: nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def _has_grad(module: nn.Module) -> bool:
    return any(p.grad is not None for p in module.parameters())


@pytest.mark.parametrize("cross_init", ["identity", "random"])
def test_each_task_loss_alone_reaches_the_other_branch(cross_init):
    net = cpu_net(backbone="resnet18", num_groups=3, fc_width=32, cross_init=cross_init, dropout=0.0)

    _grads_after(net, "aesthetic")
    assert _grad_abs_sum(net.branch_a.groups[0]) > 0
    assert _grad_abs_sum(net.branch_e.groups[0]) > 0          # only via cross[0].to_a
    assert _grad_abs_sum(net.branch_e.groups[1]) > 0          # only via cross[1].to_a
    assert not _has_grad(net.branch_e.groups[2])              # the last group feeds E's head only
    assert not _has_grad(net.branch_e.head)
    assert _grad_abs_sum(net.cross[0].to_a) > 0
    assert not _has_grad(net.cross[1].to_e)                   # to_e of the last cross feeds E only

    _grads_after(net, "emotion")
    assert _grad_abs_sum(net.branch_e.groups[0]) > 0
    assert _grad_abs_sum(net.branch_a.groups[0]) > 0          # only via cross[0].to_e
    assert not _has_grad(net.branch_a.groups[2])
    assert not _has_grad(net.branch_a.head)
    assert not _has_grad(net.cross[1].to_a)


def test_without_cross_branch_each_loss_stays_in_its_branch():
    net = cpu_net(backbone="resnet18", num_groups=3, fc_width=32, cross_branch=False, dropout=0.0)

    _grads_after(net, "aesthetic")
    assert _grad_abs_sum(net.branch_a.groups[0]) > 0
    assert _grad_abs_sum(net.branch_e) == 0.0
    assert not _has_grad(net.branch_e)

    _grads_after(net, "emotion")
    assert _grad_abs_sum(net.branch_e.groups[0]) > 0
    assert not _has_grad(net.branch_a)


# --- initialisation of the cross-branch layers ----------------------------------------------

def _expected_identity(k: int, alpha: float, own_first: bool) -> torch.Tensor:
    eye = torch.eye(k)
    halves = (alpha * eye, (1 - alpha) * eye) if own_first else ((1 - alpha) * eye, alpha * eye)
    return torch.cat(halves, dim=1)


@pytest.mark.parametrize("alpha", [0.9, 0.3])
def test_identity_init_is_weighted_identity(alpha):
    net = cpu_net(backbone="resnet18", fc_width=16, cross_init="identity", alpha=alpha)
    assert len(net.cross) == 3
    for layer, k in zip(net.cross, (64, 128, 256)):
        wa = layer.to_a.weight[:, :, 0, 0].detach()
        we = layer.to_e.weight[:, :, 0, 0].detach()
        assert wa.shape == (k, 2 * k)
        # to_a: alpha*I on A's half (first K input channels), (1-alpha)*I on E's half
        assert torch.allclose(wa, _expected_identity(k, alpha, own_first=True), atol=0, rtol=0)
        # to_e mirrored: (1-alpha)*I on A's half, alpha*I on E's half
        assert torch.allclose(we, _expected_identity(k, alpha, own_first=False), atol=0, rtol=0)
        assert float(wa[0, 0]) == pytest.approx(alpha)
        assert float(wa[0, k]) == pytest.approx(1 - alpha)
        assert float(we[0, k]) == pytest.approx(alpha)
        assert torch.count_nonzero(layer.to_a.bias) == 0
        assert torch.count_nonzero(layer.to_e.bias) == 0


def test_identity_init_mixes_the_two_feature_maps():
    layer = CrossBranchLayer(5)
    layer.init_identity(0.9)
    torch.manual_seed(2)
    a, e = torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3)
    with torch.no_grad():
        out_a, out_e = layer(a, e)
    assert torch.allclose(out_a, 0.9 * a + 0.1 * e, atol=1e-6)
    assert torch.allclose(out_e, 0.1 * a + 0.9 * e, atol=1e-6)


def test_random_init_is_not_identity():
    net = cpu_net(backbone="resnet18", num_groups=2, fc_width=16, cross_init="random", alpha=0.9)
    layer = net.cross[0]
    wa = layer.to_a.weight[:, :, 0, 0].detach()
    expected = _expected_identity(64, 0.9, own_first=True)
    assert not torch.allclose(wa, expected, atol=1e-3)
    off_diagonal = wa.clone()
    off_diagonal[torch.arange(64), torch.arange(64)] = 0
    off_diagonal[torch.arange(64), torch.arange(64) + 64] = 0
    assert torch.count_nonzero(off_diagonal) > 0.9 * off_diagonal.numel()
    assert torch.count_nonzero(layer.to_a.bias) > 0
    assert not torch.equal(layer.to_a.weight, layer.to_e.weight)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        NetConfig(backbone="resnet18", num_groups=5)     # resnet18 has 4 groups
    with pytest.raises(ValueError):
        NetConfig(num_groups=1)
    with pytest.raises(ValueError):
        NetConfig(alpha=1.5)
    with pytest.raises(ValueError):
        NetConfig(cross_init="zeros")
    with pytest.raises(ValueError):
        NetConfig(backbone="vgg19")


# --- state dict naming ---------------------------------------------------------------------

def test_vgg16_state_dict_keys_follow_torchvision_children():
    net = meta_net(backbone="vgg16")
    with torch.device("meta"):
        source = models.vgg16(weights=None).state_dict()
    bounds = [(0, 5), (5, 10), (10, 17), (17, 24), (24, 31)]
    group_of = {str(i): g for g, (lo, hi) in enumerate(bounds) for i in range(lo, hi)}
    expected = set()
    for key in source:
        if key.startswith("features."):
            rest = key[len("features."):]
            expected.add(f"groups.{group_of[rest.split('.')[0]]}.{rest}")
    keys = set(net.state_dict())
    for branch in ("branch_a", "branch_e"):
        got = {k[len(branch) + 1:] for k in keys if k.startswith(f"{branch}.groups.")}
        assert got == expected
    assert "branch_a.groups.0.0.weight" in keys
    assert "branch_e.groups.1.5.weight" in keys
    assert "branch_a.groups.4.28.bias" in keys
    assert "branch_a.head.fc1.weight" in keys and "branch_e.head.fc3.bias" in keys
    assert {k for k in keys if k.startswith("cross.")} == {
        f"cross.{i}.{c}.{p}" for i in range(4) for c in ("to_a", "to_e") for p in ("weight", "bias")}


def test_resnet18_state_dict_keys_follow_torchvision_children():
    net = meta_net(backbone="resnet18")
    keys = set(net.state_dict())
    assert "branch_a.groups.0.conv1.weight" in keys
    assert "branch_a.groups.0.bn1.running_var" in keys
    assert "branch_a.groups.0.layer1.0.conv1.weight" in keys
    assert "branch_e.groups.1.layer2.0.downsample.0.weight" in keys
    assert "branch_a.groups.3.layer4.1.bn2.running_mean" in keys
    with torch.device("meta"):
        source = models.resnet18(weights=None).state_dict()
    n_conv_part = sum(not k.startswith("fc.") for k in source)
    assert sum(k.startswith("branch_a.groups.") for k in keys) == n_conv_part


# --- cost ----------------------------------------------------------------------------------

def test_two_branch_vgg16_flops_at_224():
    net = meta_net(backbone="vgg16").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        logits_a, logits_e = net(torch.zeros(1, 3, 224, 224, device="meta"))
    assert logits_a.shape == (1, 2) and logits_e.shape == (1, 8)
    gflop = counter.get_total_flops() / 1e9
    assert gflop == pytest.approx(VGG16_TWO_BRANCH_GFLOP, abs=GFLOP_TOLERANCE)
    # and it is the cross-branch layers that add the difference to two plain branches
    plain = meta_net(backbone="vgg16", cross_branch=False).eval()
    with FlopCounterMode(display=False) as counter_plain, torch.no_grad():
        plain(torch.zeros(1, 3, 224, 224, device="meta"))
    cross_gflop = gflop - counter_plain.get_total_flops() / 1e9
    # each cross layer: two 1x1 convs 2K -> K at HxW: 2 * 2 * 2K * K * H * W flops
    expected = sum(8 * k * k * s * s for k, s in ((64, 112), (128, 56), (256, 28), (512, 14))) / 1e9
    assert cross_gflop == pytest.approx(expected, rel=1e-3)


def test_linear_head_is_one_layer_after_the_pool_and_round_trips_through_the_config():
    config = NetConfig(backbone="resnet18", num_groups=2, head="linear")
    model = CrossBranchNet(config)
    assert [type(m) for m in model.branch_e.head] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    assert model.branch_e.head.fc.in_features == 128 and model.branch_e.head.fc.out_features == 8
    logits_a, logits_e = model(torch.randn(2, 3, 64, 64))
    assert logits_a.shape == (2, 2) and logits_e.shape == (2, 8)
    assert NetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="head"):
        NetConfig(head="mlp")


def test_head_follows_the_backbone():
    assert NetConfig(backbone="vgg16").head == "fc3"          # the patent's, with ImageNet's fc1/fc2
    assert NetConfig(backbone="resnet18").head == "linear"    # benchmarks/ablation.py
    assert NetConfig(backbone="mobilenet_v3_small").head == "linear"
    assert NetConfig(backbone="resnet18", head="fc3").head == "fc3"
    assert NetConfig.from_dict(NetConfig(backbone="resnet18").to_dict()).head == "linear"
