"""Which precision training computes in: forced, or chosen by timing a training step in fp32 and
in bf16 autocast on CPUs with native bf16; and that the timing leaves the model as it was."""
import pytest
import torch

from backend.core.settings import load_settings
from model import precision as precision_module
from model import train as train_module
from model.dataset import load_training_data
from model.manifest import read_manifest
from model.network import CrossBranchNet, NetConfig
from model.precision import time_training_dtypes
from model.synthetic import write_synthetic_set
from model.train import TrainConfig, train
from precision_fakes import FakeTimings

CROP = 32


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    manifest = write_synthetic_set(tmp_path_factory.mktemp("precision"), 12, seed=5, size=40)
    return load_training_data(read_manifest(manifest), size=40)[0]


def train_recording_conv_dtypes(data, config: TrainConfig):
    """Train a small network; the dtypes its first convolution computed in while training."""
    torch.manual_seed(0)
    model = CrossBranchNet(NetConfig(backbone="resnet18"))
    seen = set()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype) if module.training else None)
    result = train(model, data, config)
    return result, seen, model


def config(**overrides) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "seed": 1, "train_size": 40, "crop_size": CROP, "patience": 0, **overrides})


@pytest.mark.parametrize("fp32, bf16, dtype", [(1100.0, 530.0, torch.bfloat16),   # resnet18 measured here
                                               (288.0, 323.0, torch.float32),     # mobilenet_v3_small
                                               (100.0, 95.0, torch.float32)])     # a near tie
def test_auto_trains_in_the_dtype_a_timed_step_finds_clearly_faster(small_data, fresh_measurements, monkeypatch,
                                                                   fp32, bf16, dtype):
    timings = FakeTimings(fp32, bf16)
    monkeypatch.setattr(train_module, "time_training_dtypes", timings)
    result, seen, model = train_recording_conv_dtypes(small_data, config())
    assert seen == {dtype} and timings.calls == 1
    assert result.bf16 == (dtype == torch.bfloat16)
    assert f"measured bf16 {bf16:.1f} vs fp32 {fp32:.1f} ms/image" in result.precision
    assert all(p.dtype == torch.float32 for p in model.parameters())   # autocast: the weights stay fp32


def test_without_native_bf16_training_stays_fp32_and_bf16_is_never_timed(small_data, fresh_measurements, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    timings = FakeTimings(fp32=100.0, bf16=1.0)
    monkeypatch.setattr(train_module, "time_training_dtypes", timings)
    result, seen, _ = train_recording_conv_dtypes(small_data, config())
    assert seen == {torch.float32} and timings.calls == 0 and not result.bf16
    assert "no native bf16" in result.precision


@pytest.mark.parametrize("forced, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_a_forced_precision_trains_in_it_untimed(small_data, fresh_measurements, monkeypatch, forced, dtype):
    # the measurement would pick the other dtype
    timings = FakeTimings(fp32=1.0, bf16=100.0) if forced == "bf16" else FakeTimings(fp32=100.0, bf16=1.0)
    monkeypatch.setattr(train_module, "time_training_dtypes", timings)
    result, seen, _ = train_recording_conv_dtypes(small_data, config(precision=forced))
    assert seen == {dtype} and timings.calls == 0 and result.precision == f"{forced} (forced)"


def test_a_training_step_is_timed_once_per_network_and_plan_in_a_process(small_data, fresh_measurements, monkeypatch):
    timings = FakeTimings(fp32=2.0, bf16=1.0)
    monkeypatch.setattr(train_module, "time_training_dtypes", timings)
    train_recording_conv_dtypes(small_data, config())
    train_recording_conv_dtypes(small_data, config(seed=2))
    assert timings.calls == 1
    train_recording_conv_dtypes(small_data, config(finetune="frozen"))   # other layers train: timed again
    assert timings.calls == 2


def test_timing_both_dtypes_leaves_weights_statistics_and_gradients_as_they_were():
    torch.manual_seed(0)
    model = CrossBranchNet(NetConfig(backbone="resnet18")).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # timed steps in turns, for 2 images: fp32 30 ms, bf16 8 ms, fp32 20 ms, bf16 6 ms
    readings = iter([0.0, 0.030, 1.0, 1.008, 2.0, 2.020, 3.0, 3.006])
    timings = time_training_dtypes(model, CROP, torch.device("cpu"), batch=2, rounds=2,
                                   timer=lambda: next(readings))
    assert timings == {"fp32": 10.0, "bf16": 3.0}
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())   # running statistics restored
    assert all(p.grad is None for p in model.parameters()) and not model.training


class DropoutNet(torch.nn.Module):
    """A two-output network that draws random numbers in training mode, as vgg16's heads do."""

    def __init__(self):
        super().__init__()
        self.conv, self.drop = torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5)

    def forward(self, images):
        features = self.drop(self.conv(images).mean((2, 3)))
        return features[:, :2], features[:, 2:]


def test_timing_leaves_the_random_state_as_it_was():
    model = DropoutNet()
    state = torch.get_rng_state()
    time_training_dtypes(model, CROP, torch.device("cpu"), batch=2, rounds=1)
    assert torch.equal(torch.get_rng_state(), state)   # a seeded run draws the same masks, timed or not


def test_config_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")


def test_setting_is_read_checked_and_reaches_the_jobs_training_config(monkeypatch):
    from backend.training.job import _train_config
    monkeypatch.setenv("AESEMO_TRAIN_PRECISION", "fp32")
    settings = load_settings()
    assert settings.train_precision == "fp32" and _train_config(settings, {}).precision == "fp32"
    monkeypatch.setenv("AESEMO_TRAIN_PRECISION", "fp16")
    with pytest.raises(ValueError, match="AESEMO_TRAIN_PRECISION"):
        load_settings()
