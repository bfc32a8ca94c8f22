"""The Hydra applications' entry point: ``beholder train`` and ``beholder predict`` are each a
thin ``@hydra.main`` around a plain function (``train(cfg)``, ``predict(cfg)``) that tests call.

The process-wide settings belong here, not in those functions: library chatter quietened, and glibc
asked to keep freed memory for the next batch (beholder/core/memory.py). The configs are read from
the installed package ``beholder.conf`` (the repository's ``conf/``)."""

from __future__ import annotations

from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from beholder.core.console import quiet_libraries
from beholder.core.errors import exit_on_user_error
from beholder.core.memory import keep_freed_memory


def hydra_application(config_name: str, task: Callable[[DictConfig], object]) -> Callable[[], object]:
    @hydra.main(version_base="1.3", config_path="pkg://beholder.conf", config_name=config_name)
    def main(cfg: DictConfig):
        quiet_libraries()
        keep_freed_memory()
        with exit_on_user_error():
            return task(cfg)

    return main
