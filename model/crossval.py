"""What a training run does when its held-out set is too small to early-stop on (a few images
decide nothing): by default (`folds=0`) nothing is chosen on it: the network trains every
configured epoch on all training rows, the cosine schedule run to its end, and keeps the last.

With `folds`, the epochs are chosen by repeated k-fold cross-validation on the training rows
first: each fold trains a copy of the starting network with early stopping on that fold, the
chosen number of epochs is the median of the folds' best epochs, and the final network then
trains on all training rows for that many epochs (keeping the last epoch). That costs
folds x repeats extra trainings, and on 96 labels it chose fewer epochs than the plain run
trains (the folds' best epochs on 2/3 of the rows and 26 validation images are noisy and early),
with the cosine schedule squeezed into them (docs/benchmarks/training.md).
"""
from __future__ import annotations

import copy
import logging
import math
import statistics
from dataclasses import dataclass, replace

import torch

from .dataset import TrainingData
from .train import Progress, TrainConfig, train

log = logging.getLogger(__name__)

FOLDS = 3
REPEATS = 2


@dataclass(frozen=True)
class CrossValidation:
    min_heldout: int = 30   # labelled held-out tasks per task type below which the held-out set decides nothing
    folds: int = 0          # 0: every configured epoch, the last kept; else epochs chosen by this many folds
    repeats: int = REPEATS


def fold_splits(n: int, folds: int, repeats: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(training, validation) indices of every fold of every repeat; each repeat reshuffles."""
    splits = []
    for repeat in range(repeats):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + repeat))
        for part in order.tensor_split(folds):
            if len(part) and len(part) < n:
                kept = torch.ones(n, dtype=torch.bool)
                kept[part] = False
                splits.append((torch.nonzero(kept).flatten(), part))
    return splits


def choose_epochs(model, data: TrainingData, config: TrainConfig, cv: CrossValidation,
                  progress: Progress | None = None) -> dict:
    """The epochs to train for, and the spread of the folds' scores, from k-fold runs on `data`.
    `model` is left as it was: each fold trains a copy."""
    folds = min(cv.folds, len(data))
    best_epochs, epochs_run, scores, seconds = [], [], [], 0.0
    for number, split in enumerate(fold_splits(len(data), folds, cv.repeats, config.seed), start=1):
        # the progress callback also notices a cancelled job between the folds' steps
        fold_progress = (lambda event, fold=number: progress({**event, "crossval_fold": fold})) if progress else None
        result = train(copy.deepcopy(model), data, replace(config, keep_best=True), progress=fold_progress,
                       split=split)
        best_epochs.append(result.best_epoch)
        epochs_run.append(result.epochs_run)
        seconds += result.seconds
        scores.append(result.history[result.best_epoch - 1]["score"])
        log.info("cross-validation fold %d: best epoch %d, score %.4f", number, result.best_epoch, scores[-1])
    return {"epochs": max(1, round(statistics.median(best_epochs))), "folds": folds, "repeats": cv.repeats,
            "best_epochs": best_epochs, "epochs_run": epochs_run, "scores": scores, "seconds": seconds,
            **spread(scores)}


def spread(scores: list[float]) -> dict:
    """Mean, standard deviation and range of the folds' finite scores (a fold without a labelled
    validation task scores NaN)."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return {"score_mean": None, "score_sd": None, "score_min": None, "score_max": None}
    return {"score_mean": statistics.fmean(finite), "score_sd": statistics.pstdev(finite),
            "score_min": min(finite), "score_max": max(finite)}
