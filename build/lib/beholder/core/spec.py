"""Building objects from plain config dicts (a Hydra config, or a checkpoint's hyperparameters)
without running anything the dict names: the class comes from an explicit registry, and every
argument must be a plain value of the type its parameter declares.

A checkpoint is data from wherever the user found it; Hydra's ``instantiate`` would call any
``_target_`` nested in it (``shutil.copyfile``, ``os.system``), so nothing in beholder builds a
model part from a checkpoint with it.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing

from omegaconf import DictConfig, ListConfig, OmegaConf

from beholder.core.errors import UserError


def fits(value, hint) -> bool:
    """Whether ``value`` is a plain value (number, string, bool, None, list of those) of type ``hint``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arm) for arm in typing.get_args(hint))
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (typing.Any,)
        return isinstance(value, (list, tuple)) and all(fits(v, item) for v in value)
    if hint is type(None) or hint is None:
        return value is None
    if hint is typing.Any:
        return isinstance(value, (int, float, str, bool)) or value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return type(value) is hint
    if hint is dict:
        return isinstance(value, dict)
    return False


def typed_arguments(what: str, target, values: dict, skip: tuple[str, ...] = ()) -> dict:
    """``values`` checked against ``target``'s signature: every key a parameter, every value of its
    declared type; keys starting with ``_`` (Hydra's ``_target_``, ``_partial_``) are dropped.
    OmegaConf nodes count as the plain values they resolve to."""
    values = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v for k, v in values.items()}
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
    else:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    parameters = inspect.signature(target).parameters
    arguments = {}
    for key, value in values.items():
        if key.startswith("_"):
            continue
        if key not in parameters or key in skip:
            raise UserError(f"{what}.{key}: unknown option (options: {', '.join(p for p in parameters if p not in skip)})")
        hint = hints.get(key, typing.Any)
        if not fits(value, hint):
            raise UserError(f"{what}.{key}={value!r}: expected {getattr(hint, '__name__', hint)}")
        arguments[key] = value
    return arguments


def registered(what: str, registry: dict[str, type], spec) -> type:
    """The class a spec's ``_target_`` names, if it is in ``registry``; else a one-line error."""
    target = spec.get("_target_") if isinstance(spec, (dict, DictConfig)) else None
    if target not in registry:
        raise UserError(f"{what}._target_={target!r} is not one of beholder's {what}s ({', '.join(registry)})")
    return registry[target]
