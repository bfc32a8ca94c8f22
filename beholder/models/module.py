"""The LightningModule: loss, metrics, optimiser and the keep threshold around a :class:`ScoreNet`."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from beholder.core.errors import UserError
from beholder.core.spec import registered, typed_arguments
from beholder.data.gallery import GalleryDataset, build_transform, collate, raw_safe_workers
from beholder.models import checkpoint as checkpoint_format
from beholder.models.checkpoint import IncompatibleCheckpoint
from beholder.models.metrics import GalleryMetrics
from beholder.models.model import BackboneSpec, ScoreNet

OPTIMIZERS = {
    f"torch.optim.{name}": cls
    for name, cls in vars(torch.optim).items()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
}


def build_optimizer(spec: dict, params) -> torch.optim.Optimizer:
    """A torch optimiser from its config dict (``_target_: torch.optim.SGD``, plain arguments)."""
    cls = registered("optimizer", OPTIMIZERS, spec)
    return cls(params, **typed_arguments("optimizer", cls, spec, skip=("params",)))


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
        self.feature_cache = None  # a FeatureCache of the frozen network's features (prediction)
        self.calibrated_on = None  # which photos val_positive_scores are of, when not "tier >= positive_tier"

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
        (:mod:`beholder.data.features`: a training batch's ``features``, or a prediction batch's
        ``cached`` rows followed by its pictures); None when every image of the batch was unreadable.
        With ``feature_cache`` set (a frozen network), the features computed here are cached."""
        if "features" in batch:
            return self.net.standardise(batch["features"])
        parts = [batch["cached"].float()] if "cached" in batch else []
        if "image" in batch:
            images = batch["image"].contiguous(memory_format=torch.channels_last) if self.channels_last else batch["image"]
            computed = self.net.features(images).float()
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

    def predict_step(self, batch, batch_idx):
        result = {"index": batch["index"], "image_path": batch["image_path"], "skipped": batch["skipped"], "taken": batch.get("taken")}
        inputs = self.head_inputs(batch)
        if inputs is not None:
            # The head in full precision under bf16-mixed: 8-bit mantissas would tie many scores.
            with torch.autocast(self.device.type, enabled=False):
                inputs = inputs.float()
                head, outputs = self.net.head, self.net.head(inputs)
                result["embeddings"] = F.normalize(inputs, dim=-1)
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


@torch.no_grad()
def score_images(module: BeholderModule, root: str, images: list[str], store, batch_size: int = 32, num_workers: int = 2) -> dict[str, tuple[float, int]]:
    """In-process scoring of a few images: image -> (score, predicted tier); unreadable ones are left out.
    (``predict.py`` is the resumable, multi-device way for whole galleries.)"""
    dataset = GalleryDataset(root, images, store, build_transform(module.net.data_config, train=False))
    results = {}
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, **raw_safe_workers(images, num_workers))
    for i, batch in enumerate(loader):
        out = module.predict_step(batch, i)
        if "scores" in out:
            results.update(zip(out["image_path"], zip(out["scores"].tolist(), out["tiers"].tolist())))
    return results


def load_checkpoint(path: str, map_location="cpu") -> BeholderModule:
    """Rebuild the model from a checkpoint file alone (and the weight packages it refers to); never
    runs code stored in the file."""
    checkpoint = checkpoint_format.read(path, map_location)
    try:
        hparams = typed_arguments("hyper_parameters", BeholderModule, dict(checkpoint["hyper_parameters"]))
        hparams["backbone"] = {**hparams["backbone"], "pretrained": False, "weights": None}  # weights come from the file
        build_optimizer(hparams["optimizer"], [nn.Parameter(torch.zeros(1))])  # checked now, built only when training
        module = BeholderModule(**hparams)
        module.hparams["backbone"] = trained_with = dict(checkpoint["hyper_parameters"]["backbone"])
        module.net.spec = BackboneSpec.parse(trained_with)  # saved again, its packaged networks stay references
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
    except UserError as error:
        raise IncompatibleCheckpoint(f"ckpt_path={path}: refused: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise IncompatibleCheckpoint(f"ckpt_path={path}: does not fit this version of beholder ({error})") from None
    check_finite(module, path)
    return module.eval()


def check_finite(module: BeholderModule, path: str) -> None:
    """A checkpoint whose numbers are not all finite (a diverged run, a damaged file) would score
    every photo NaN, or train on NaN: it is refused, naming the first such tensor."""
    named = [*module.state_dict().items(), ("val_positive_scores", module.val_positive_scores)]
    head = module.net.head
    named += [(f"head.{name}", torch.tensor(float(getattr(head, name)))) for name in ("target_mean", "target_std") if hasattr(head, name)]
    for name, tensor in named:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise IncompatibleCheckpoint(f"ckpt_path={path}: refused: {name} holds numbers that are not finite "
                                         f"({count} NaN or infinite)")
    if (module.net.feature_std <= 0).any():
        raise IncompatibleCheckpoint(f"ckpt_path={path}: refused: feature_std holds {int((module.net.feature_std <= 0).sum())} "
                                     "values that are not positive (features cannot be standardised by them)")
