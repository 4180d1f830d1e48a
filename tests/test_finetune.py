"""Which layers train for which set size, that frozen ones stay put, and that the feature cache
answers what the uncached network answers for the same view."""
import pytest
import torch

from backend.core.settings import load_settings
from model.feature_cache import CacheRequest, build_feature_cache
from model.finetune import forward_steps, freeze, run_steps, trainable_steps, unfrozen_groups
from model.network import CrossBranchNet, NetConfig
from model.synthetic import write_synthetic_set
from model.manifest import read_manifest
from model.dataset import load_training_data
from model.train import TrainConfig, train
from model.transforms import normalize, random_crop_flip


def resnet(**options):
    torch.manual_seed(0)
    return CrossBranchNet(NetConfig(backbone="resnet18", **options)).eval()


@pytest.mark.parametrize("labels, expected", [
    (1, 0), (24, 0), (96, 0), (124, 0), (125, 1), (249, 1), (250, 2), (499, 2), (500, 3), (999, 3), (1000, 4),
    (50_000, 4),
])
def test_auto_unfreezes_one_group_per_doubling_and_all_from_the_threshold(labels, expected):
    assert unfrozen_groups(labels, groups=4, full_from=1000) == expected


def test_which_steps_train_in_each_mode():
    steps = forward_steps(resnet())
    assert [s.name for s in steps] == ["group0", "cross0", "group1", "cross1", "group2", "cross2", "group3", "heads"]
    assert trainable_steps("auto", steps, 96, 1000) == {"heads"}
    # a cross-branch layer trains with the group it feeds
    assert trainable_steps("auto", steps, 200, 1000) == {"cross2", "group3", "heads"}
    assert trainable_steps("auto", steps, 300, 1000) == {"cross1", "group2", "cross2", "group3", "heads"}
    assert trainable_steps("auto", steps, 1000, 1000) == {s.name for s in steps}
    assert trainable_steps("frozen", steps, 10**6, 1000) == {"cross0", "cross1", "cross2", "heads"}
    assert trainable_steps("full", steps, 1, 1000) == {s.name for s in steps}
    with pytest.raises(ValueError, match="finetune must be one of"):
        trainable_steps("half", steps, 1, 1000)


def test_steps_compose_to_the_forward_pass():
    model = resnet()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images)
        got = run_steps(forward_steps(model), images, images)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


def test_config_refuses_unknown_modes_and_out_of_range_numbers():
    with pytest.raises(ValueError, match="finetune must be one of"):
        TrainConfig(finetune="some")
    with pytest.raises(ValueError, match="full_finetune_labels must be an integer in 1.."):
        TrainConfig(full_finetune_labels=0)
    with pytest.raises(ValueError, match="cache_views must be an integer in 1..64"):
        TrainConfig(cache_views=0)


def test_setting_is_read_and_range_checked(monkeypatch):
    monkeypatch.setenv("AESEMO_FULL_FINETUNE_LABELS", "300")
    assert load_settings().full_finetune_labels == 300
    monkeypatch.setenv("AESEMO_FULL_FINETUNE_LABELS", "0")
    with pytest.raises(ValueError, match="AESEMO_FULL_FINETUNE_LABELS must be an integer in 1.."):
        load_settings()
    monkeypatch.setenv("AESEMO_FULL_FINETUNE_LABELS", "many")
    with pytest.raises(ValueError, match="AESEMO_FULL_FINETUNE_LABELS must be an integer"):
        load_settings()


@pytest.mark.parametrize("mode, labels", [("auto", 10), ("auto", 200), ("frozen", 10)])
def test_cache_gives_the_logits_of_the_uncached_forward_pass_for_the_same_view(mode, labels):
    model = resnet()
    plan = freeze(model, mode, labels, 1000)
    images = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    mean = (0.4, 0.5, 0.6)
    request = CacheRequest(views=2, max_bytes=2**30, crop=40, mean=mean, device=torch.device("cpu"))
    cache = build_feature_cache(plan, images, images[:, :, :40, :40], request, torch.Generator().manual_seed(5))
    assert cache is not None and cache.train_views[0].shape[:2] == (2, 3)
    # the same crops and flips, drawn from the same generator, through the whole network
    generator = torch.Generator().manual_seed(5)
    views = [random_crop_flip(images, 40, generator) for _ in range(2)]
    index = torch.tensor([2, 0])
    with torch.no_grad():
        got = cache.train_logits(index, torch.Generator().manual_seed(9))
        chosen = torch.randint(0, 2, (2,), generator=torch.Generator().manual_seed(9))
        batch = torch.stack([views[v][i] for v, i in zip(chosen.tolist(), index.tolist())])
        expected = model(normalize(batch, mean))
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
        held_out = model(normalize(images[:, :, :40, :40], mean))
        for e, g in zip(held_out, cache.eval_logits(torch.arange(3))):
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


def test_no_cache_when_nothing_is_frozen_or_it_would_not_fit():
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    request = CacheRequest(views=2, max_bytes=2**30, crop=40, mean=(0.5,) * 3, device=torch.device("cpu"))
    model = resnet()
    assert build_feature_cache(freeze(model, "full", 10), images, images, request, torch.Generator()) is None
    tiny = CacheRequest(views=2, max_bytes=100, crop=40, mean=(0.5,) * 3, device=torch.device("cpu"))
    assert build_feature_cache(freeze(model, "auto", 10), images, images, tiny, torch.Generator()) is None


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    manifest = write_synthetic_set(tmp_path_factory.mktemp("ft"), 40, seed=2, size=40)
    return load_training_data(read_manifest(manifest), size=40)[0]


@pytest.mark.parametrize("mode, labels_for_full, cache_bytes", [
    ("auto", 1000, 2**30),   # heads only, cached
    ("auto", 64, 2**30),     # 32 training images of 64: every group but the first, cached after it
    ("frozen", 1000, 0),     # every group frozen, no cache
])
def test_frozen_parameters_and_statistics_do_not_change(small_data, mode, labels_for_full, cache_bytes):
    model = resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=2, lr=0.05, seed=1, train_size=40, crop_size=32, patience=0, finetune=mode,
                         full_finetune_labels=labels_for_full, feature_cache_bytes=cache_bytes, cache_views=2)
    result = train(model, small_data, config)
    trainable = trainable_steps(mode, forward_steps(model), 32, labels_for_full)
    assert set(result.trained.split(", ")) == trainable   # what model.json reports as trained
    prefixes = {"heads": ("branch_a.head.", "branch_e.head."),
                **{f"group{i}": (f"branch_a.groups.{i}.", f"branch_e.groups.{i}.") for i in range(4)},
                **{f"cross{i}": (f"cross.{i}.",) for i in range(3)}}
    for name, prefix in prefixes.items():
        changed = [k for k, v in model.state_dict().items() if k.startswith(prefix)
                   and v.is_floating_point() and not torch.equal(v, before[k])]
        assert bool(changed) == (name in trainable), (name, changed[:3])
    assert all(p.requires_grad for p in model.parameters())  # the model leaves training whole


@pytest.mark.parametrize("parent_meta, configured, mode", [
    ({"init": "random"}, "auto", "full"),                             # an untrained random base
    ({"init": "imagenet:resnet18.pth"}, "auto", "auto"),              # an ImageNet base
    ({"init": "imagenet:resnet18.pth"}, "full", "full"),
    ({"init": "version:v0001", "origin": "random"}, "frozen", "full"),  # trained, but its lineage began random
    ({"init": "version:v0001", "origin": "imagenet:resnet18.pth"}, "auto", "auto"),
])
def test_the_job_freezes_only_starts_whose_filters_mean_something(parent_meta, configured, mode):
    from backend.training.job import finetune_mode
    assert finetune_mode(parent_meta, configured) == mode
