"""Class balance for skewed labels (model/balance.py): class weights from expected counts,
soft targets and masks respected, the weighted loss, the balanced draw, and training with each."""
from __future__ import annotations

import pytest
import torch

from model.balance import MAX_CLASS_WEIGHT, class_weights, expected_counts, sample_weights
from model.dataset import TrainingData
from model.loss import soft_cross_entropy
from model.network import CrossBranchNet, NetConfig
from model.synthetic import generated_training_data
from model.train import TrainConfig, _batches, train


def data_of(aesthetic: list, emotion: list, emotion_mask: list | None = None) -> TrainingData:
    """Two-class tasks for hand-checked numbers: each target a distribution over 2 classes."""
    n = len(aesthetic)
    emotion_mask = emotion_mask or [1.0] * n
    return TrainingData(images=torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
                        targets={"aesthetic": torch.tensor(aesthetic), "emotion": torch.tensor(emotion)},
                        masks={"aesthetic": torch.ones(n), "emotion": torch.tensor(emotion_mask)},
                        weights=torch.ones(n), rows=[None] * n)


def test_a_skewed_task_weighs_its_rare_class_up_and_keeps_a_mean_weight_of_one():
    six_to_two = [[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 2
    data = data_of(six_to_two, [[0.5, 0.5]] * 8)
    weights = class_weights(data)
    assert torch.allclose(weights["aesthetic"], torch.tensor([8 / 12, 8 / 4]))
    per_row = torch.tensor(six_to_two) @ weights["aesthetic"]
    assert per_row.mean().item() == pytest.approx(1.0)
    assert torch.allclose(weights["emotion"], torch.ones(2))   # balanced in expectation


def test_soft_targets_count_as_expected_counts():
    data = data_of([[0.75, 0.25], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0]] * 4)
    assert torch.allclose(expected_counts(data, "aesthetic"), torch.tensor([2.75, 1.25]))
    assert torch.allclose(class_weights(data)["aesthetic"], torch.tensor([4 / 5.5, 4 / 2.5]))


def test_rows_masked_out_of_a_task_do_not_count():
    # the third and fourth rows carry an emotion target but are not labelled for emotion
    data = data_of([[1.0, 0.0]] * 4, [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], [1.0, 1.0, 0.0, 0.0])
    assert torch.allclose(class_weights(data)["emotion"], torch.ones(2))


def test_an_absent_class_weighs_nothing_and_a_task_with_no_labels_weighs_one():
    data = data_of([[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3, [0.0, 0.0, 0.0])
    weights = class_weights(data)
    assert weights["aesthetic"].tolist() == [1.0, 0.0]
    assert weights["emotion"].tolist() == [1.0, 1.0]


def test_a_class_seen_once_among_hundreds_is_capped():
    data = data_of([[1.0, 0.0]] * 299 + [[0.0, 1.0]], [[0.5, 0.5]] * 300)
    assert class_weights(data)["aesthetic"][1].item() == MAX_CLASS_WEIGHT


def test_the_weighted_loss_is_the_weighted_mean_of_each_sample_s_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    mask = torch.tensor([1.0, 1.0, 0.0])
    w = torch.tensor([0.5, 3.0])
    log_p = torch.log_softmax(logits, dim=1)
    expected = (0.5 * -log_p[0, 0] + 3.0 * -log_p[1, 1]) / (0.5 + 3.0)
    assert soft_cross_entropy(logits, targets, mask, class_weights=w).item() == pytest.approx(expected.item())
    unweighted = soft_cross_entropy(logits, targets, mask)
    assert soft_cross_entropy(logits, targets, mask, class_weights=torch.ones(2)).item() == pytest.approx(
        unweighted.item())


def test_the_balanced_draw_picks_the_rare_class_as_often_as_the_common_one():
    data = data_of([[1.0, 0.0]] * 12 + [[0.0, 1.0]] * 4, [[1.0, 0.0]] * 16, [0.0] * 16)
    draw = sample_weights(data, class_weights(data))
    rows = torch.cat([torch.cat(list(_batches(16, 4, torch.Generator().manual_seed(s), draw))) for s in range(50)])
    rare_share = (rows >= 12).float().mean().item()
    assert 0.4 < rare_share < 0.6


def test_training_takes_each_balance_and_refuses_an_unknown_one():
    data = generated_training_data(12, seed=3, size=32, emotion_share=[0.7] + [0.3 / 7] * 7)
    for balance in ("loss", "sampling", "off"):
        model = CrossBranchNet(NetConfig(backbone="resnet18", head="linear"))
        config = TrainConfig(epochs=1, batch_size=4, train_size=32, crop_size=28, val_fraction=0.25, patience=0,
                             device="cpu", class_balance=balance)
        assert train(model, data, config).epochs_run == 1
    with pytest.raises(ValueError, match="class_balance"):
        TrainConfig(class_balance="inverse")
