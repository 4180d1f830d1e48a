"""The training loop: SGD with momentum, a learning-rate schedule, a held-out split with
per-task accuracy and macro-F1 after each epoch, early stopping and the best checkpoint."""
from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .balance import class_weights, sample_weights
from .classes import TASKS
from .dataset import TrainingData
from .errors import TrainingDiverged
from .heldout import named_split
from .feature_cache import CacheRequest, FeatureCache, build_feature_cache
from .finetune import FreezePlan, freeze
from .limits import BALANCES, FINETUNE_MODES, PRECISIONS, SCHEDULES, TRAINING_DEFAULTS, TRAINING_LIMITS, check_training_value
from .loss import two_task_loss
from .metrics import selection_score, task_metrics
from .network import CrossBranchNet
from .precision import TIMING_BATCH, PrecisionChoice, choose_precision, measured_once, time_training_dtypes
from .transforms import IMAGENET_STD, normalize, pixel_mean, random_crop_flip
from .version import first_non_finite

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]
_DEFAULT = TRAINING_DEFAULTS
# NHWC spares cuDNN and oneDNN layout conversions between convolutions: vgg16 on an H200 in bf16
# 1198 vs 880 images/s; a resnet18 training step on 2 EPYC cores 1.13x faster in fp32, 1.16x in
# bf16 (benchmarks/train_step.py)
MEMORY_FORMAT = torch.channels_last


@dataclass
class TrainConfig:
    epochs: int = _DEFAULT["epochs"]
    batch_size: int = _DEFAULT["batch_size"]
    lr: float = _DEFAULT["lr"]
    momentum: float = _DEFAULT["momentum"]
    weight_decay: float = _DEFAULT["weight_decay"]
    schedule: str = _DEFAULT["schedule"]
    val_fraction: float = _DEFAULT["val_fraction"]
    patience: int = _DEFAULT["patience"]             # 0: never stop early
    seed: int = _DEFAULT["seed"]
    lam: float = _DEFAULT["lam"]
    train_size: int = _DEFAULT["train_size"]         # images are resized to this square before random crops
    crop_size: int = _DEFAULT["crop_size"]
    center_crop_eval: bool = False    # held-out images: resize to crop_size (the patent) or centre crop
    device: str | None = None         # None: CUDA when present, else CPU
    precision: str = _DEFAULT["precision"]           # "fp32", "bf16" (autocast) or "auto" (model/precision.py: measured)
    heldout_split: str | None = None  # rows of this manifest split are the held-out set (else a random one)
    keep_best: bool = True            # False: the last epoch's weights (epochs chosen by cross-validation)
    class_balance: str = _DEFAULT["class_balance"]   # skewed labels: "loss" (class weights), "sampling" or "off"
    finetune: str = _DEFAULT["finetune"]             # "full", "frozen" or "auto" (model/finetune.py)
    full_finetune_labels: int = _DEFAULT["full_finetune_labels"]   # "auto": every layer trains from this many images
    cache_views: int = _DEFAULT["cache_views"]       # augmented views per image in the frozen-feature cache
    feature_cache_bytes: int = _DEFAULT["feature_cache_bytes"]     # larger caches are skipped (training runs uncached)

    def __post_init__(self):
        for name in TRAINING_LIMITS:  # LimitError (a ValueError) naming the field and its range
            check_training_value(name, getattr(self, name))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.class_balance not in BALANCES:
            raise ValueError(f"class_balance must be one of {BALANCES}, got {self.class_balance!r}")
        if self.crop_size > self.train_size:
            raise ValueError(f"crop_size {self.crop_size} must not exceed train_size {self.train_size}")


@dataclass
class TrainResult:
    pixel_mean: tuple[float, float, float]
    metrics: dict                          # held-out metrics of the best epoch
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    device: str
    bf16: bool
    seconds: float
    train_size: int
    val_size: int
    history: list[dict] = field(default_factory=list)
    trained: str = ""                      # the steps whose weights trained ("group0, cross0, ..., heads")
    precision: str = ""                    # fp32 or bf16 autocast, and why ("bf16 (measured ...)")
    stopping: str = ""                     # how the run ended and which epoch it kept, in words

    def to_meta(self) -> dict:
        data = asdict(self)
        data["pixel_mean"] = list(self.pixel_mean)
        return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random held-out split; at least one held-out sample when a fraction is asked
    and there are two samples or more."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    return order[n_val:], order[:n_val]


def make_schedule(optimizer, config: TrainConfig, total_steps: int):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    if config.schedule == "step":
        every = max(total_steps // 3, 1)
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def train(model: CrossBranchNet, data: TrainingData, config: TrainConfig,
          progress: Progress | None = None, show_bar: bool = False,
          split: tuple[torch.Tensor, torch.Tensor] | None = None) -> TrainResult:
    """Train `model` in place; on return it holds the weights of the best held-out epoch.
    `split` (training, held-out indices) wins over the config's named or random split."""
    seed_everything(config.seed)
    device = pick_device(config.device)
    train_idx, val_idx = split or named_split(data.rows, config.heldout_split) or \
        split_indices(len(data), config.val_fraction, config.seed)
    train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    mean = pixel_mean(train_set.images)
    train_set, val_set = _resident(train_set, device), _resident(val_set, device)
    model.to(device, memory_format=MEMORY_FORMAT)
    plan = freeze(model, config.finetune, len(train_set), config.full_finetune_labels)
    log.info("fine-tuning (%s, %d training images): %s", config.finetune, len(train_set), plan.describe())
    precision = training_precision(model, config, device, plan)
    use_bf16 = precision.dtype == torch.bfloat16
    log.info("training on %s in %s", device, precision.describe())
    generator = torch.Generator().manual_seed(config.seed)
    features = _feature_cache(model, plan, train_set, val_set, config, mean, device, use_bf16, generator)

    optimizer = _optimizer(model, config)
    steps_per_epoch = _steps_per_epoch(len(train_set), config.batch_size)
    scheduler = make_schedule(optimizer, config, steps_per_epoch * config.epochs)

    bar = None
    if show_bar:
        from tqdm import tqdm
        bar = tqdm(total=steps_per_epoch * config.epochs, unit="step", dynamic_ncols=True)

    best_score, best_state, best_epoch, best_metrics = -math.inf, None, 0, {}
    history, stale, started = [], 0, time.monotonic()
    run = EpochRun(model, config, mean, device, use_bf16, optimizer, scheduler, generator, steps_per_epoch,
                   started, progress, bar, plan=plan, features=features,
                   **_balance(train_set, config, device))
    epoch = 0
    try:
        for epoch in range(1, config.epochs + 1):
            train_loss = run.train_epoch(train_set, epoch)
            metrics, val_loss = run.evaluate(val_set) if len(val_set) \
                else (run.evaluate(train_set)[0], float("nan"))
            _stop_if_diverged(model, config, epoch, {"training loss": train_loss,
                                                     **({"held-out loss": val_loss} if len(val_set) else {})})
            score = selection_score(metrics)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "score": score, "metrics": _summary(metrics)})
            improved = score > best_score or best_state is None or not config.keep_best
            if improved:
                best_score, best_epoch, best_metrics, stale = score, epoch, metrics, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                stale += 1
            log.info("epoch %d/%d: train loss %.4f, held-out loss %.4f, %s", epoch, config.epochs,
                     train_loss, val_loss, _summary(metrics))
            if progress:
                progress({"stage": "evaluated", "epoch": epoch, "epochs": config.epochs,
                          "train_loss": train_loss, "val_loss": val_loss, "metrics": _summary(metrics),
                          "best_epoch": best_epoch})
            if config.patience and stale >= config.patience and epoch < config.epochs:
                log.info("early stop after epoch %d: no better held-out score for %d epochs", epoch, stale)
                break
    finally:
        if bar is not None:
            bar.close()
    stopping = stopping_statement(config, epoch, best_epoch, stale)
    if progress:
        progress({"stage": "stopped", "stopping": stopping})
    model.load_state_dict(best_state)
    for param in model.parameters():
        param.requires_grad_(True)
    model.to("cpu", memory_format=torch.contiguous_format)
    return TrainResult(pixel_mean=mean, metrics=best_metrics, best_epoch=best_epoch, epochs_run=epoch,
                       stopped_early=epoch < config.epochs, device=str(device), bf16=use_bf16,
                       seconds=time.monotonic() - started, train_size=len(train_set),
                       val_size=len(val_set), history=history, trained=plan.describe(),
                       precision=precision.describe(), stopping=stopping)


def stopping_statement(config: TrainConfig, epoch: int, best_epoch: int, stale: int) -> str:
    """How a run ended, for the admin: "stopped at epoch 4 of 10: no better held-out score for
    3 epochs; kept epoch 1"."""
    if epoch < config.epochs:
        return (f"stopped at epoch {epoch} of {config.epochs}: no better held-out score for {stale} epochs; "
                f"kept epoch {best_epoch}")
    ran = "ran its one epoch" if config.epochs == 1 else f"ran all {config.epochs} epochs"
    if not config.keep_best:
        return f"{ran}; kept the last"
    return f"{ran}; kept epoch {best_epoch} (the best held-out score)"


def _optimizer(model: CrossBranchNet, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum over the parameters that train; no weight decay on biases and
    normalisation scales, as usual for SGD fine-tuning."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    return torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=config.lr, momentum=config.momentum)


def training_precision(model: CrossBranchNet, config: TrainConfig, device: torch.device,
                       plan: FreezePlan) -> PrecisionChoice:
    """fp32 or bf16 autocast: the configured precision, "auto" as model/precision.py chooses, timing
    a training step of what trains in both (once per network, crop, threads and plan in a process)."""
    key = ("training step", model.config.backbone, config.crop_size, TIMING_BATCH, torch.get_num_threads(),
           plan.describe())
    return choose_precision(config.precision, device, measured_once(key, lambda: time_training_dtypes(
        model, config.crop_size, device, MEMORY_FORMAT)))


def _balance(data: TrainingData, config: TrainConfig, device: torch.device) -> dict:
    """EpochRun's class-balance fields: class weights for the loss, or how often to draw each row."""
    if config.class_balance == "off":
        return {}
    weights = class_weights(data)
    if config.class_balance == "sampling":
        return {"draw": sample_weights(data, weights)}
    return {"class_weights": {task: w.to(device) for task, w in weights.items()}}


def _feature_cache(model, plan: FreezePlan, train_set: TrainingData, val_set: TrainingData, config: TrainConfig,
                   mean, device: torch.device, use_bf16: bool, generator: torch.Generator) -> FeatureCache | None:
    """The frozen prefix's outputs, for the training views and for the set `train` evaluates."""
    evaluated = val_set if len(val_set) else train_set
    model.eval()
    request = CacheRequest(config.cache_views, config.feature_cache_bytes, config.crop_size, mean, device, use_bf16)
    return build_feature_cache(plan, train_set.images,
                               eval_view(evaluated.images, config.crop_size, config.center_crop_eval),
                               request, generator)


def _stop_if_diverged(model, config: TrainConfig, epoch: int, losses: dict) -> None:
    """A network with a NaN or infinite weight answers NaN for every image (and an argmax over
    NaN is class 0, which still scores): stop rather than keep or save it."""
    bad = [f"the {name} is {value}" for name, value in losses.items() if not math.isfinite(value)]
    tensor = first_non_finite(model.state_dict())
    if tensor is not None:
        bad.append(f"weights {tensor} are not finite")
    if bad:
        raise TrainingDiverged(f"training diverged at epoch {epoch}: {'; '.join(bad)} (lr {config.lr:g}); "
                               "nothing was saved; try a lower learning rate")


def _resident(data: TrainingData, device: torch.device) -> TrainingData:
    """The data moved onto the GPU when it takes under a quarter of the free memory: crops,
    flips and normalisation then run there, so the host does not starve the GPU."""
    if device.type != "cuda":
        return data
    free, _ = torch.cuda.mem_get_info(device)
    if data.images.numel() * data.images.element_size() > free / 4:
        log.info("training images stay in host memory (%.1f GiB free on %s)", free / 2**30, device)
        return data
    return data.to(device)


def _steps_per_epoch(n: int, batch_size: int) -> int:
    # a last batch of one sample is dropped: BatchNorm cannot train on a single sample
    full, rest = divmod(n, batch_size)
    return max(full + (1 if rest > 1 else 0), 1)


def _batches(n: int, batch_size: int, generator: torch.Generator, draw: torch.Tensor | None = None):
    """Random batches covering the rows once, or, with `draw` (a weight per row), as many rows
    drawn with replacement in proportion to it."""
    order = torch.randperm(n, generator=generator) if draw is None \
        else torch.multinomial(draw, n, replacement=True, generator=generator)
    for step in range(_steps_per_epoch(n, batch_size)):
        yield order[step * batch_size:(step + 1) * batch_size]


@dataclass
class EpochRun:
    """One training run's moving parts, shared by its epochs and its evaluations."""
    model: CrossBranchNet
    config: TrainConfig
    mean: tuple[float, float, float]
    device: torch.device
    use_bf16: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    steps: int                        # per epoch
    started: float                    # time.monotonic() at the start, for the ETA
    progress: Progress | None = None
    bar: object = None                # a tqdm bar, or None
    class_weights: dict | None = None  # per task (C,), for the training loss
    draw: torch.Tensor | None = None   # per row, how often batches draw it
    plan: FreezePlan | None = None    # which layers train
    features: FeatureCache | None = None   # the frozen prefix's outputs, when cached

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def _train_logits(self, data: TrainingData, index: torch.Tensor):
        with self._autocast():
            if self.features is not None:
                return self.features.train_logits(index, self.generator)
            images = random_crop_flip(data.images[index], self.config.crop_size, self.generator)
            images = normalize(images.to(self.device, non_blocking=True), self.mean, IMAGENET_STD)
            return self.model(images.contiguous(memory_format=MEMORY_FORMAT))

    def _eval_logits(self, data: TrainingData, index: torch.Tensor):
        with self._autocast():
            if self.features is not None:
                return self.features.eval_logits(index)
            images = eval_view(data.images[index], self.config.crop_size, self.config.center_crop_eval)
            images = normalize(images.to(self.device), self.mean, IMAGENET_STD)
            return self.model(images.contiguous(memory_format=MEMORY_FORMAT))

    def _loss(self, logits, data: TrainingData, index: torch.Tensor, weighted: bool):
        """The two-task loss of a batch's logits. Training weights each sample (data.weights);
        the held-out loss does not."""
        logits_a, logits_e = logits

        def picked(values: torch.Tensor) -> torch.Tensor:
            return values[index].to(self.device)
        loss = two_task_loss(logits_a, logits_e, picked(data.targets["aesthetic"]), picked(data.targets["emotion"]),
                             picked(data.masks["aesthetic"]), picked(data.masks["emotion"]), lam=self.config.lam,
                             weights=picked(data.weights) if weighted else None,
                             class_weights=self.class_weights if weighted else None)
        return loss, (logits_a, logits_e)

    def train_epoch(self, data: TrainingData, epoch: int) -> float:
        """One pass over `data` in random batches; the mean training loss."""
        self.model.train()
        if self.plan is not None:
            self.plan.hold_frozen_in_eval()
        total, seen = 0.0, 0
        for step, index in enumerate(_batches(len(data), self.config.batch_size, self.generator, self.draw),
                                     start=1):
            loss, _ = self._loss(self._train_logits(data, index), data, index, weighted=True)
            self.optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            self.optimizer.step()
            self.scheduler.step()
            value = float(loss.total.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(f"training diverged: the loss became {value} at epoch {epoch}, step {step} "
                                       f"(lr {self.config.lr:g}); nothing was saved; try a lower learning rate")
            total, seen = total + value * len(index), seen + len(index)
            self._report_step(epoch, step, value)
        return total / max(seen, 1)

    def _report_step(self, epoch: int, step: int, loss: float) -> None:
        epochs = self.config.epochs
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch}/{epochs}")
            self.bar.set_postfix(loss=f"{loss:.4f}")
            self.bar.update(1)
        if self.progress:
            done = (epoch - 1) * self.steps + step
            elapsed = time.monotonic() - self.started
            self.progress({"stage": "training", "epoch": epoch, "epochs": epochs, "step": step,
                           "steps": self.steps, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                           "eta_s": elapsed / done * (self.steps * epochs - done),
                           # early stopping may end the run sooner: the ETA is then a bound
                           "eta_at_most": bool(self.config.patience)})

    @torch.no_grad()
    def evaluate(self, data: TrainingData, batch_size: int = 32):
        """Held-out metrics per task (images prepared as at inference) and the held-out loss."""
        self.model.eval()
        probs = {task: [] for task in TASKS}
        losses, weights = [], []
        for start in range(0, len(data), batch_size):
            index = torch.arange(start, min(start + batch_size, len(data)))
            loss, logits = self._loss(self._eval_logits(data, index), data, index, weighted=False)
            losses.append(float(loss.total) * len(index))
            weights.append(len(index))
            for task, task_logits in zip(TASKS, logits):
                probs[task].append(torch.softmax(task_logits.float(), dim=1).cpu())
        metrics = {task: task_metrics(torch.cat(probs[task]), data.targets[task].cpu(), data.masks[task].cpu())
                   for task in TASKS}
        return metrics, sum(losses) / max(sum(weights), 1)


def eval_view(images: torch.Tensor, crop: int, center_crop: bool) -> torch.Tensor:
    """uint8 training-size images as inference sees them: resized to `crop` (the patent) or
    centre-cropped."""
    if center_crop:
        offset = (images.shape[-1] - crop) // 2
        return images[..., offset:offset + crop, offset:offset + crop]
    resized = F.interpolate(images.float(), size=(crop, crop), mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _summary(metrics: dict) -> dict:
    return {task: None if m is None else {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}
            for task, m in metrics.items()}
