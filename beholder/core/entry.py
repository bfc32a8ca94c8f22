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

import difflib
import importlib
import re
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig, OmegaConf

from beholder.conf.schema import problems, register
from beholder.core.console import quiet_libraries
from beholder.core.errors import UserError, exit_on_user_error, exit_with, required
from beholder.core.help import help_text
from beholder.core.memory import keep_freed_memory
from beholder.core.vocabulary import KEYS, old_keys_given

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


# Hydra's own flags (beholder train --hydra-help); any other --name is an option of the command
HYDRA_FLAGS = frozenset({"--help", "--hydra-help", "--version", "--cfg", "--resolve", "--package", "--run", "--multirun",
                         "--shell-completion", "--config-path", "--config-name", "--config-dir", "--experimental-rerun", "--info"})


def flags_as_options(arguments: list[str]) -> list[str]:
    """``--gallery X`` and ``--gallery=X`` as ``gallery=X`` (``--endpoint-url`` as ``endpoint_url``), the
    way the ``--flag`` commands take them; a flag alone (``--xmp``) is ``xmp=true``. Hydra's own flags
    and ``-m`` stay as they are."""
    out, rest = [], list(arguments)
    while rest:
        argument = rest.pop(0)
        flag, equals, value = argument.partition("=")
        if not flag.startswith("--") or flag in HYDRA_FLAGS:
            out.append(argument)
            continue
        if not equals:
            value = rest.pop(0) if rest and not rest[0].startswith("-") and "=" not in rest[0] else "true"
        out.append(f"{flag[2:].replace('-', '_')}={value}")
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


def flat_options(config: dict, prefix: str = "") -> dict[str, object]:
    """Every option of ``config`` (a plain container, unresolved) by its dotted key, Hydra's own left out."""
    options = {}
    for key, value in config.items():
        if key != "hydra":
            options[f"{prefix}{key}"] = value
            if isinstance(value, dict):
                options |= flat_options(value, f"{prefix}{key}.")
    return options


def compose_config(config_name: str, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """``train`` or ``predict``'s config as the command composes it (the schemas of conf/schema.py
    registered), outside a run: for tests, benches and the check of the options."""
    from hydra import compose, initialize_config_module

    register()
    with initialize_config_module(config_module="beholder.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def check_config(config_name: str, cfg: DictConfig) -> None:
    """The first of :func:`~beholder.conf.schema.problems` as a user's error."""
    found = problems(config_name, cfg)
    if found:
        raise UserError(found[0])


EXPECTED = {"integer": "a whole number", "float": "a number", "bool": "true or false", "boolean": "true or false"}


def validation_problem(error: Exception) -> str:
    """A value of the wrong type, from OmegaConf's message (``Value 'abc' of type 'str' could not be
    converted to Integer``, ``is not a valid bool``, ``is not a ListConfig``; ``full_key: cv``), as one line."""
    message = str(error)
    key = re.search(r"full_key: (\S+)", message)
    value = (re.search(r"Value '(.*?)' (?:of type '\w+' )?could not be converted to (\w+)", message)
             or re.search(r"Value '(.*?)' is not a valid (\w+)", message))
    if key and value:
        return f"{key[1]}={value[1]}: expected {EXPECTED.get(value[2].lower(), value[2].lower())}"
    if key and "is not a ListConfig" in message:
        return f"{key[1]}: expected a list, e.g. {key[1]}=[1,2]"
    return " ".join(message.split("\n")[0].split()) + (f" ({key[1]})" if key else "")


def misread_option(config_name: str, arguments: list[str]) -> str | None:
    """One line for options Hydra cannot compose (an unknown key, with the nearest known one; a
    choice a config group lacks, with its choices; a value of the wrong type), that leave a required
    one out, or that conf/schema.py's :func:`~beholder.conf.schema.problems` refuses; None when they
    compose whole, or when Hydra's own flags (``-m``, ``--help``, ...) are given: those are Hydra's to read."""
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf.errors import ValidationError

    if any(argument.startswith("-") for argument in arguments):
        return None
    try:
        config = compose_config(config_name, arguments)
    except MissingConfigException as error:
        group = re.search(r"Could not find '([^'/]+)/([^']*)'", str(error))
        choices = re.findall(r"^\t(\S+)$", str(error).split("Config search path")[0], re.M)
        if not group:
            return " ".join(str(error).split())
        return f"{group[1]}={group[2]}: not one of the choices ({', '.join(choices)})"
    except ConfigCompositionException as error:
        if isinstance(error.__cause__, ValidationError):
            return validation_problem(error.__cause__)
        key = re.search(r"Could not override '([^']+)'", str(error))
        if not key:
            return " ".join(str(error).split())
        base = compose_config(config_name, [], return_hydra_config=True)
        known = [*flat_options(OmegaConf.to_container(base, resolve=False)), *(group for group in base.hydra.runtime.choices
                                                                              if not group.startswith("hydra/"))]
        near = difflib.get_close_matches(key[1], known, n=1, cutoff=0.75)
        return f"{key[1]}: no such option" + (f"; did you mean {near[0]}?" if near else f" (beholder {config_name} --help lists them)")
    given_as = {new for new, _ in old_keys_given(config, KEYS.get(config_name, {})).values()}  # an old spelling sets them too
    missing = sorted(key for key, value in flat_options(OmegaConf.to_container(config, resolve=False)).items()
                     if value == "???" and key not in given_as)
    if missing:
        return required(missing)
    return next(iter(problems(config_name, config)), None)


def hydra_application(config_name: str, task: str) -> Callable[[], object]:
    """``task``: ``module:function``, imported once the options are read (a misread one is refused
    before torch loads)."""
    @hydra.main(version_base="1.3", config_path="pkg://beholder.conf", config_name=config_name)
    def main(cfg: DictConfig):
        module, _, function = task.partition(":")
        run_task = getattr(importlib.import_module(module), function)
        quiet_libraries()  # after the import: Lightning sets its loggers' levels as it is imported
        keep_freed_memory()
        with exit_on_user_error():
            return run_task(cfg)

    def run():
        if {"-h", "--help"} & set(sys.argv[1:]):
            print(help_text(config_name))
            sys.exit(0)
        sys.argv = [sys.argv[0], *literal_paths(run_dir_inside_output(flags_as_options(sys.argv[1:])))]
        problem = misread_option(config_name, sys.argv[1:])
        if problem:
            exit_with(problem)
        register()
        return main()

    return run
