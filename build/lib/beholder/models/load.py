"""A model rebuilt from a checkpoint file alone, its numbers checked before anything uses them."""

from __future__ import annotations

import torch
from torch import nn

from beholder.core.errors import UserError
from beholder.core.spec import typed_arguments
from beholder.models import checkpoint as checkpoint_format
from beholder.models.backbones import BackboneSpec
from beholder.models.checkpoint import IncompatibleCheckpoint
from beholder.models.module import BeholderModule
from beholder.models.optim import build_optimizer


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
        raise IncompatibleCheckpoint(f"ckpt={path}: refused: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise IncompatibleCheckpoint(f"ckpt={path}: does not fit this version of beholder ({error})") from None
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
            raise IncompatibleCheckpoint(f"ckpt={path}: refused: {name} holds numbers that are not finite "
                                         f"({count} NaN or infinite)")
    if (module.net.feature_std <= 0).any():
        raise IncompatibleCheckpoint(f"ckpt={path}: refused: feature_std holds {int((module.net.feature_std <= 0).sum())} "
                                     "values that are not positive (features cannot be standardised by them)")
