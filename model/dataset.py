"""Loading a manifest's images into memory, pre-resized to the training size.

Images are decoded once (uint8, 256x256: 192 KiB each) so epochs cost no decoding; an image
that cannot be read is skipped with a warning naming its manifest row, unless `strict`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .classes import TASKS
from .errors import ImageError, ManifestError
from .images import DEFAULT_MAX_PIXELS, open_image
from .manifest import Manifest, Row
from .transforms import TRAIN_SIZE, to_uint8_tensor

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    images: torch.Tensor                  # uint8 (N, 3, S, S)
    targets: dict[str, torch.Tensor]      # per task (N, C), zeros where unlabelled
    masks: dict[str, torch.Tensor]        # per task (N,) 1.0 where labelled
    weights: torch.Tensor                 # (N,)
    rows: list[Row]

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device) -> TrainingData:
        return TrainingData(images=self.images.to(device), targets={t: v.to(device) for t, v in self.targets.items()},
                            masks={t: v.to(device) for t, v in self.masks.items()},
                            weights=self.weights.to(device), rows=self.rows)

    def subset(self, index: torch.Tensor) -> TrainingData:
        return TrainingData(
            images=self.images[index],
            targets={t: v[index] for t, v in self.targets.items()},
            masks={t: v[index] for t, v in self.masks.items()},
            weights=self.weights[index],
            rows=[self.rows[i] for i in index.tolist()],
        )


def stack_targets(rows: list[Row], classes: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per task the (N, C) targets, zeros where unlabelled, and the (N,) mask of labelled rows."""
    targets, masks = {}, {}
    for task in TASKS:
        width = len(classes[task])
        targets[task] = torch.stack([r.targets[task] if r.targets[task] is not None else torch.zeros(width)
                                     for r in rows])
        masks[task] = torch.tensor([0.0 if r.targets[task] is None else 1.0 for r in rows])
    return targets, masks


def load_training_data(manifest: Manifest, size: int = TRAIN_SIZE, max_pixels: int = DEFAULT_MAX_PIXELS,
                       strict: bool = False) -> tuple[TrainingData, list[str]]:
    """Returns the data and one message per skipped row."""
    images, rows, skipped = [], [], []
    for row in manifest.rows:
        try:
            image = open_image(row.image, max_pixels=max_pixels)
        except ImageError as exc:
            message = f"{manifest.path}:{row.line}: skipped: {exc}"
            if strict:
                raise ManifestError(message.replace("skipped: ", "")) from None
            log.warning("%s", message)
            skipped.append(message)
            continue
        images.append(to_uint8_tensor(image, size))
        rows.append(row)
    if not rows:
        raise ManifestError(f"{manifest.path}: none of the {len(manifest.rows)} images could be read")
    targets, masks = stack_targets(rows, manifest.classes)
    return TrainingData(images=torch.stack(images), targets=targets, masks=masks,
                        weights=torch.tensor([r.weight for r in rows]), rows=rows), skipped
