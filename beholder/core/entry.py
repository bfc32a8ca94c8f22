"""The Hydra applications' entry point: ``beholder train`` and ``beholder predict`` are each a
thin ``@hydra.main`` around a plain function (``train(cfg)``, ``predict(cfg)``) that tests call.

The process-wide settings belong here, not in those functions: library chatter quietened, and glibc
asked to keep freed memory for the next batch (beholder/core/memory.py). The configs are read from
the installed package ``beholder.conf`` (the repository's ``conf/``).

A path typed on the command line is taken as typed: photographers' folders are called ``Tom's
wedding``, ``Trip [2024], day 2`` or ``day=1``, and a folder whose name holds ``${...}`` must not
turn into another folder. Before Hydra reads the arguments, the value of every path option is
quoted for Hydra's grammar and escaped for OmegaConf's interpolation (:func:`literal_paths`)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig

from beholder.core.console import quiet_libraries
from beholder.core.errors import exit_on_user_error
from beholder.core.memory import keep_freed_memory

# The options whose value is a file or folder (an old spelling too), and Hydra's own folders.
PATH_OPTIONS = frozenset({
    "gallery", "labels", "output", "ckpt", "ckpt_path", "ratings", "feature_cache", "base_ckpt", "resume", "save", "runs_root", "output_dir",
    "data.root", "data.labels", "data.cache_dir", "backbone.weights", "hydra.run.dir", "hydra.sweep.dir",
})
NOT_A_PATH = ("null", "last")  # feature_cache=null turns the cache off; resume=last finds the newest run


def quoted(value: str) -> str:
    """``value`` as a quoted string of Hydra's override grammar that OmegaConf reads back as
    exactly ``value``: ``${`` escaped for OmegaConf (with any backslashes before it), then
    backslashes before a quote or the string's end doubled and quotes escaped for Hydra."""
    value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    value = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value)
    value = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, value)
    return f"'{value}'"


def literal_paths(arguments: list[str]) -> list[str]:
    """Hydra's command-line overrides with each path option's value quoted (:func:`quoted`); a
    value the user quoted already is left as it is. A path option is thus never swept by ``-m``."""
    out = []
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals and key.lstrip("+~") in PATH_OPTIONS and value not in NOT_A_PATH and not re.fullmatch(r"'.*'|\".*\"", value, re.S):
            argument = f"{key}={quoted(value)}"
        out.append(argument)
    return out


def run_dir_inside_output(arguments: list[str]) -> list[str]:
    """With ``output_dir=`` given (train), Hydra's run folder (``.hydra``, the log) is that folder,
    not a new ``outputs/<date>/<time>`` beside it; a ``hydra.run.dir=`` given wins."""
    keys = {argument.partition("=")[0].lstrip("+~") for argument in arguments if "=" in argument}
    if "hydra.run.dir" in keys:
        return arguments
    given = [argument.partition("=")[2] for argument in arguments if argument.partition("=")[0].lstrip("+~") == "output_dir"]
    # Hydra resolves its log file's path a second time: a folder whose name holds "${" keeps Hydra's own folder
    return [*arguments, f"hydra.run.dir={given[-1]}"] if given and "${" not in given[-1] else arguments


def hydra_application(config_name: str, task: Callable[[DictConfig], object]) -> Callable[[], object]:
    @hydra.main(version_base="1.3", config_path="pkg://beholder.conf", config_name=config_name)
    def main(cfg: DictConfig):
        quiet_libraries()
        keep_freed_memory()
        with exit_on_user_error():
            return task(cfg)

    def run():
        sys.argv = [sys.argv[0], *literal_paths(run_dir_inside_output(sys.argv[1:]))]
        return main()

    return run
