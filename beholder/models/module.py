"""The LightningModule: loss, metrics, optimiser and the keep threshold around a :class:`ScoreNet`."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from beholder.models import checkpoint as checkpoint_format
from beholder.models.metrics import GalleryMetrics
from beholder.models.optim import build_optimizer
from beholder.models.scorenet import ScoreNet


class BeholderModule(pl.LightningModule):
    """Trains a :class:`ScoreNet` and remembers the scores of the top-tier validation images, so
    that prediction can set the threshold that keeps all (or a given share) of them.

    All arguments are plain dicts/lists (no pickled objects), so ``load_checkpoint`` rebuilds the
    model from a checkpoint alone with ``weights_only=True``.
    """

    def __init__(
        self,
        backbone: dict,
        head: dict,
        optimizer: dict,
        image_size: list[int] | None = None,
        score_column: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = ScoreNet(backbone, head, image_size)
        self.metrics = nn.ModuleDict({stage: GalleryMetrics(self.net.head.positive_tier) for stage in ("val", "test")})
        self.val_positive_scores = torch.empty(0)
        self.channels_last = False
        self.bf16_features = False  # the networks' features computed under bf16 autocast (the head stays fp32)
        self.feature_cache = None  # a FeatureCache of the frozen network's features (prediction)
        self.calibrated_on = None  # which photos val_positive_scores are of, when not "tier >= positive_tier"
        self.group_similarity = None  # this model's near-copy threshold (beholder/train/near_copies.py)
        self.taste_space = None  # a crowd model's taste space, as stored (beholder/train/taste.py)
        self.rated_scores = None  # a personal model's: its out-of-fold scores of the person's rated photos, and their ratings

    @property
    def calibration_photos(self) -> str:
        """Which photos ``val_positive_scores`` are the scores of, in words for a summary."""
        return self.calibrated_on or f"tier >= {self.net.head.positive_tier}"

    def use_channels_last(self) -> None:
        """NHWC weights and batches: tensor-core GPUs convolve those fastest."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

    def forward(self, images):
        return self.net(images)

    def on_train_epoch_start(self):
        self.net.train()  # frozen norms back to eval: the probe, DDP's SyncBatchNorm or a restore may have reset them

    def head_inputs(self, batch):
        """The standardised features the head reads, from a batch of images or of cached features
        (:mod:`beholder.models.features`: a training batch's ``features``, or a prediction batch's
        ``cached`` rows followed by its pictures); None when every image of the batch was unreadable.
        With ``feature_cache`` set (a frozen network), the features computed here are cached."""
        if "features" in batch:
            return self.net.standardise(batch["features"])
        parts = [batch["cached"].float()] if "cached" in batch else []
        if "image" in batch:
            images = batch["image"].contiguous(memory_format=torch.channels_last) if self.channels_last else batch["image"]
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.bf16_features):
                computed = self.net.photo_features(images, batch.get("tiles")).float()
            if self.feature_cache is not None:
                for content, vector in zip(batch["content"], computed.detach().cpu().numpy()):
                    if np.isfinite(vector).all():
                        self.feature_cache.put(content, 0, vector)
            parts.append(computed)
        return self.net.standardise(torch.cat(parts)) if parts else None

    def outputs(self, batch):
        inputs = self.head_inputs(batch)
        return None if inputs is None else self.net.head(inputs)

    def training_step(self, batch, batch_idx):
        outputs = self.outputs(batch)
        if outputs is None:
            return None
        loss = self.net.head.loss(outputs, batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(outputs))
        return loss

    def _evaluate(self, batch, stage):
        outputs = self.outputs(batch)
        if outputs is None:
            return None
        head = self.net.head
        scores, tiers = head.score(outputs), head.tier(outputs)
        values = batch["target"] if self.hparams.score_column else None
        self.metrics[stage].update(scores, batch["tier"], tiers, values, batch["index"])
        self.log(f"{stage}/loss", head.loss(outputs, batch), batch_size=len(scores), sync_dist=True)
        return {"scores": scores, "pred_tiers": tiers}

    def validation_step(self, batch, batch_idx):
        return self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._evaluate(batch, "test")

    def _log_epoch(self, stage):
        results = self.metrics[stage].compute()
        if stage == "val" and not self.trainer.sanity_checking:
            self.val_positive_scores = self.metrics[stage].positive_scores().cpu()
        self.log_dict({f"{stage}/{name}": value for name, value in results.items()})
        if stage == "val":
            self.log("val_gr", results["gallery_reduction"], prog_bar=True, logger=False)
        self.metrics[stage].reset()

    def on_validation_epoch_end(self):
        self._log_epoch("val")

    def on_test_epoch_end(self):
        self._log_epoch("test")

    @staticmethod
    def embedding(head_inputs: torch.Tensor) -> torch.Tensor:
        """What search and near-copy grouping compare: the head's input, L2-normalised."""
        return F.normalize(head_inputs.float(), dim=-1)

    def predict_step(self, batch, batch_idx):
        result = {"index": batch["index"], "image_path": batch["image_path"], "skipped": batch["skipped"], "retry": batch.get("retry", []),
                  "taken": batch.get("taken"), "technical": batch.get("technical")}
        inputs = self.head_inputs(batch)
        if inputs is not None:
            # The head in full precision under bf16-mixed: 8-bit mantissas would tie many scores.
            with torch.autocast(self.device.type, enabled=False):
                inputs = inputs.float()
                head, outputs = self.net.head, self.net.head(inputs)
                result["embeddings"] = self.embedding(inputs)
                result.update(scores=head.score(outputs), tiers=head.tier(outputs))
                if hasattr(head, "probabilities"):
                    result["probabilities"] = head.probabilities(outputs)
        return result

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        return build_optimizer(self.hparams.optimizer, params)

    def on_save_checkpoint(self, checkpoint):
        checkpoint_format.pack(checkpoint, self)

    def on_load_checkpoint(self, checkpoint):
        checkpoint_format.unpack(checkpoint)
        self.val_positive_scores = torch.tensor(checkpoint.get("val_positive_scores", []))
        self.calibrated_on = checkpoint.get("calibrated_on")
        self.group_similarity = checkpoint.get("group_similarity")
        self.taste_space = checkpoint.get("taste_space")
        self.rated_scores = checkpoint.get("rated_scores")
