"""One word for each thing, in every command: ``gallery`` (the photos), ``labels`` (a labels CSV),
``ckpt`` (a model), ``output`` (a predict run's folder). The spellings of earlier versions still
work, with a note naming the new one."""

from __future__ import annotations

import argparse
import re
import sys

from omegaconf import DictConfig, OmegaConf, open_dict

from beholder.core.console import printable

OLD_SPELLINGS_UNTIL = "1.0"  # the version whose commands no longer read the spellings below
# command-line flags of the argparse commands: old -> new
# (--output of similar and label named what predict wrote, which they read: now --scored)
# (--scores of review and ratings write named predict's scores.csv: --scored takes it, or its folder)
FLAGS = {"--root": "--gallery", "--model": "--ckpt", "--index": "--scored", "--output": "--scored", "--scores": "--scored",
         "--k": "--count", "--workers": "--downloads"}
# the Hydra commands' keys: old -> new
KEYS = {"train": {"data.root": "gallery", "data.labels": "labels", "ckpt_path": "resume"}, "predict": {"ckpt_path": "ckpt", "ratings": "labels"}}


def note(text: str) -> None:
    print(f"beholder: note: {printable(text)}", file=sys.stderr, flush=True)


def respell(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` with the old spellings among ``flags`` replaced by today's (``--root X``, ``--root=X``)."""
    out = []
    for arg in argv:
        flag, equals, value = arg.partition("=")
        if flag in flags:
            note(f"{flag} is now spelled {FLAGS[flag]}; the old spelling stops working in beholder {OLD_SPELLINGS_UNTIL}")
            arg = FLAGS[flag] + equals + value
        out.append(arg)
    return out


def old_keys_given(cfg: DictConfig, renames: dict[str, str]) -> dict[str, tuple[str, object]]:
    """Of ``renames`` (old key -> new), those the user set: old key -> (new key, the value given). An
    old key that is an interpolation of the new one (``data.root: ${gallery}``) was not set."""
    given = {}
    for old, new in renames.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or leaf not in node or OmegaConf.is_interpolation(node, leaf) or OmegaConf.is_missing(node, leaf):
            continue
        if node[leaf] is not None:
            given[old] = (new, node[leaf])
    return given


def respell_config(cfg: DictConfig, renames: dict[str, str]) -> None:
    """Hydra keys: an old key the user set (``ckpt_path=``, ``data.root=``) moves to its new one; a
    top-level old key is then unset."""
    for old, (new, value) in old_keys_given(cfg, renames).items():
        note(f"{old}= is now spelled {new}=; the old spelling stops working in beholder {OLD_SPELLINGS_UNTIL}")
        with open_dict(cfg):
            OmegaConf.update(cfg, new, value, merge=False)
            if "." not in old:
                cfg[old] = None


class CommandParser(argparse.ArgumentParser):
    """The ``--flag`` commands' parser, which also takes ``key=value`` for a flag it has
    (``scored=culled`` as ``--scored culled``), the way train and predict take their options."""

    def __init__(self, *args, **kwargs):
        self.flags: set[str] = set()  # before argparse adds --help
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def add_argument(self, *names, **kwargs):
        self.flags |= {name for name in names if name.startswith("--")}
        return super().add_argument(*names, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        given = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self.as_flag(arg) for arg in given], namespace)

    def as_flag(self, arg: str) -> str:
        match = re.fullmatch(r"([A-Za-z][\w-]*)=(.*)", arg, re.S)
        flag = f"--{match[1].replace('_', '-')}" if match else None
        return f"{flag}={match[2]}" if flag in self.flags else arg
