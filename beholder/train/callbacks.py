"""Training callbacks: checkpoints that survive a resume, the best head of a fold, reports of
unreadable images, and the validation pictures for TensorBoard."""

from __future__ import annotations

import logging
import math

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageDraw
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

from beholder.core.launch import check_shared_folder

log = logging.getLogger(__name__)


class ResumableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that keeps the best score seen before a resume. Lightning restores it only
    into the same folder, and a resumed run writes to a new one: the first epoch after the resume
    became "best" however bad. The earlier best file stays where it is until a better epoch comes."""

    def load_state_dict(self, state_dict):
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


def logging_interval(trainer_cfg, photos: int, batch_size: int) -> int:
    """``trainer.log_every_n_steps``, lowered for a small gallery (fewer batches an epoch than the
    interval) so that its training is logged at least once an epoch."""
    return max(1, min(int(trainer_cfg.log_every_n_steps), photos // batch_size))


class SharedRunFolder(pl.Callback):
    """On several processes, the first writes the checkpoints and every one reads the best back
    for the test: the run folder must be one they all see."""

    def __init__(self, folder: str):
        self.folder = folder

    def setup(self, trainer, pl_module, stage):
        check_shared_folder(trainer, self.folder, "hydra.run.dir")


class SkippedImages(pl.Callback):
    """Warns once for each unreadable image (the data sends them in ``batch["skipped"]``) and
    reports the count when the run ends."""

    def __init__(self):
        self.skipped: dict[str, str] = {}

    def _note(self, batch):
        for image, reason in batch.get("skipped", []) if isinstance(batch, dict) else []:
            if image not in self.skipped:
                self.skipped[image] = reason
                log.warning("skipped unreadable image %s: %s", image, reason)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._note(batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._note(batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._note(batch)

    def state_dict(self):
        return {"skipped": dict(self.skipped)}

    def load_state_dict(self, state_dict):
        self.skipped.update(state_dict.get("skipped", {}))


class ValidationImages(pl.Callback):
    """Each validation epoch: the tier confusion matrix, and the ``count`` best- and worst-scored
    validation images, as TensorBoard images."""

    def __init__(self, count: int = 8):
        self.count = count
        self.best: list[tuple[float, torch.Tensor]] = []
        self.worst: list[tuple[float, torch.Tensor]] = []

    def on_validation_epoch_start(self, trainer, pl_module):
        self.best, self.worst = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not outputs or trainer.sanity_checking or "image" not in batch:  # cached features have no pictures
            return
        pairs = list(zip(outputs["scores"].tolist(), batch["image"].cpu()))
        self.best = sorted(self.best + pairs, key=lambda p: -p[0])[: self.count]
        self.worst = sorted(self.worst + pairs, key=lambda p: p[0])[: self.count]

    def on_validation_epoch_end(self, trainer, pl_module):
        logger = trainer.logger
        if trainer.sanity_checking or not isinstance(logger, TensorBoardLogger):
            return
        mean = torch.tensor(pl_module.net.data_config["mean"])[:, None, None]
        std = torch.tensor(pl_module.net.data_config["std"])[:, None, None]
        step = trainer.global_step
        for name, pairs in (("best", self.best), ("worst", self.worst)) if self.best else ():
            images = torch.stack([image * std + mean for _, image in pairs]).clamp(0, 1)
            logger.experiment.add_image(f"val/{name}_scored", make_grid(images, nrow=1 if images.shape[-1] > 2 * images.shape[-2] else 4), step)
        matrix = pl_module.metrics["val"].confusion_matrix().cpu()
        logger.experiment.add_image("val/confusion_matrix", draw_confusion_matrix(matrix), step)


def draw_confusion_matrix(matrix: torch.Tensor, cell: int = 48) -> torch.Tensor:
    """Rows: true tier; columns: predicted tier; darker = more images."""
    n = matrix.shape[0]
    picture = Image.new("RGB", ((n + 1) * cell, (n + 1) * cell), "white")
    draw = ImageDraw.Draw(picture)
    top = max(int(matrix.max()), 1)
    for i in range(n):
        draw.text((cell // 3, (i + 1) * cell + cell // 3), f"t{i}", fill="black")
        draw.text(((i + 1) * cell + cell // 3, cell // 3), f"p{i}", fill="black")
        for j in range(n):
            shade = 255 - int(200 * int(matrix[i, j]) / top)
            box = ((j + 1) * cell, (i + 1) * cell, (j + 2) * cell - 1, (i + 2) * cell - 1)
            draw.rectangle(box, fill=(shade, shade, 255))
            draw.text((box[0] + cell // 4, box[1] + cell // 3), str(int(matrix[i, j])), fill="black")
    return pil_to_tensor(picture)


class BestHead(pl.Callback):
    """Keeps, in memory, the head's weights from the validation with the best ``monitor`` (a fold of
    ``cv=K`` needs no checkpoint file of its frozen networks); the last ones if none was finite."""

    def __init__(self, monitor: str, mode: str):
        self.monitor, self.mode = monitor, mode
        self.best, self.state = math.nan, None

    def _keep(self, pl_module, value: float) -> None:
        self.best, self.state = value, {k: v.detach().clone() for k, v in pl_module.net.head.state_dict().items()}

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        if self.state is None or math.isnan(self.best) or (value > self.best if self.mode == "max" else value < self.best):
            self._keep(pl_module, value)

    def on_fit_end(self, trainer, pl_module):
        if self.state is None:
            self._keep(pl_module, math.nan)


def configured_callbacks(nodes: DictConfig, mode: str) -> list[pl.Callback]:
    """The callbacks config group's choices (``callbacks=early_stopping``); a ``mode: null`` is
    ``optimized_metric``'s mode."""
    return [instantiate(node, **({"mode": mode} if "mode" in node and node.mode is None else {})) for node in nodes.values()]
