"""Optimisers by config: torch's own classes, named by their path, built with typed plain arguments."""

from __future__ import annotations

import torch

from beholder.core.spec import registered, typed_arguments

OPTIMIZERS = {
    f"torch.optim.{name}": cls
    for name, cls in vars(torch.optim).items()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
}


def build_optimizer(spec: dict, params) -> torch.optim.Optimizer:
    """A torch optimiser from its config dict (``_target_: torch.optim.SGD``, plain arguments)."""
    cls = registered("optimizer", OPTIMIZERS, spec)
    return cls(params, **typed_arguments("optimizer", cls, spec, skip=("params",)))
