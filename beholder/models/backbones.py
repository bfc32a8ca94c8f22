"""timm backbones: created with their weights, frozen below their top blocks, and their pooled features."""

from __future__ import annotations

import contextlib
import functools
import os

import timm
import torch
from timm.models import group_parameters
from torch import nn

from beholder.conf.schema import BackboneSpec
from beholder.core.errors import MissingInput, UserError
from beholder.core.spec import typed_arguments
from beholder.models.weights import PYPI_WEIGHTS, WeightsUnavailable, pypi_weights, state_digest


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


@functools.lru_cache(maxsize=8)
def package_state(name: str, source: str) -> tuple[dict, str]:
    """The state of timm model ``name`` (no classifier) with the weights of installed package
    ``source``, and its digest: what a checkpoint that refers to these weights gets back."""
    state = create_backbone(name, True, source).state_dict()
    return state, state_digest(state)


def backbone_spec(values: dict) -> BackboneSpec:
    """A backbone's options (a config node or a checkpoint's), checked: each a plain value of its type."""
    if not hasattr(values, "keys") or "name" not in values:
        raise UserError("backbone.name: missing")
    return BackboneSpec(**typed_arguments("backbone", BackboneSpec, values))


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
