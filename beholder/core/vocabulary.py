"""One word for each thing, in every command: ``gallery`` (the photos), ``labels`` (a labels CSV),
``ckpt`` (a model), ``output`` (a predict run's folder). The spellings of earlier versions still
work, with a note naming the new one."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf, open_dict

from beholder.core.console import printable

# command-line flags of the argparse commands: old -> new
FLAGS = {"--root": "--gallery", "--model": "--ckpt", "--index": "--output"}


def note(text: str) -> None:
    print(f"beholder: note: {printable(text)}", file=sys.stderr, flush=True)


def respell(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """``argv`` with the old spellings among ``flags`` replaced by today's (``--root X``, ``--root=X``)."""
    out = []
    for arg in argv:
        flag, equals, value = arg.partition("=")
        if flag in flags:
            note(f"{flag} is now spelled {FLAGS[flag]}")
            arg = FLAGS[flag] + equals + value
        out.append(arg)
    return out


def respell_config(cfg: DictConfig, renames: dict[str, str]) -> None:
    """Hydra keys: an old key the user set (``ckpt_path=``, ``data.root=``) moves to its new one.
    An old key that is an interpolation of the new one (``data.root: ${gallery}``) was not set."""
    for old, new in renames.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is None or leaf not in node or OmegaConf.is_interpolation(node, leaf) or OmegaConf.is_missing(node, leaf):
            continue
        value = node[leaf]
        if value is None:
            continue
        note(f"{old}= is now spelled {new}=")
        with open_dict(cfg):
            OmegaConf.update(cfg, new, value, merge=False)
            if not parent:
                node[leaf] = None
