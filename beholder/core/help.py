"""``beholder train --help`` and ``beholder predict --help``: each option with what it does, read from
the commented config files in conf/ (the one place options are declared), without importing torch."""

from __future__ import annotations

import re
from importlib.resources import files

# the groups whose options a command's help lists under their own prefix
GROUP_OPTIONS = {"train": ("data", "backbone", "trainer"), "predict": ("trainer", "technical")}
HYDRA_FLAGS = ("-m KEY=A,B  run one job per value (a sweep: beholder train -m head=softmax,regression)",
               "--cfg job   print the composed config instead of running",
               "--hydra-help  Hydra's own options")


ALIAS = re.compile(r"\$\{\w+\}")  # an option that only repeats another (data.root: ${gallery})


def option_lines(text: str, prefix: str = "") -> list[str]:
    """The option lines of a config file (``key: value  # what it does``), nested blocks as
    ``block.key``; the defaults list, Hydra's block, ``_target_`` and plain aliases of another
    option left out."""
    lines, block, above = [], None, []
    for raw in text.splitlines():
        if not raw.strip():
            above = []
            continue
        if raw.lstrip().startswith("#"):
            above.append(raw.strip().lstrip("# "))
            continue
        indent = len(raw) - len(raw.lstrip())
        key, _, rest = raw.strip().partition(":")
        value, _, about = (part.strip() for part in rest.partition("#"))
        about = about or " ".join(above)  # an option explained in the comment above it
        above = []
        if indent == 0:
            block = None if value else key
            name = None if block else key
        else:
            name = f"{block}.{key}" if block not in (None, "defaults", "hydra") and indent == 2 else None
        if name and key != "_target_" and not ALIAS.fullmatch(value):
            lines.append(f"{prefix}{name}={value}" + (f"  {about}" if about else ""))
    return lines


def group_defaults(config_name: str, conf) -> dict[str, str]:
    """Each config group the command reads (its defaults list) and its default choice."""
    defaults = re.findall(r"^\s+- (?:override )?/?(\w+): (\w+)", conf.joinpath(f"{config_name}.yaml").read_text(), re.M)
    return {group: default for group, default in defaults if group != "hydra" and conf.joinpath(group).is_dir()}


def groups(defaults: dict[str, str], conf) -> list[str]:
    """Each group with its choices, the default first."""
    listed = []
    for group, default in defaults.items():
        choices = sorted(p.name[:-5] for p in conf.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        listed.append(f"{group}={'|'.join([default, *[c for c in choices if c != default]])}")
    return listed


def help_text(config_name: str) -> str:
    conf = files("beholder.conf")
    own = conf.joinpath(f"{config_name}.yaml").read_text()
    defaults = group_defaults(config_name, conf)
    usage = own.splitlines()[0].lstrip("# ")
    text = [f"usage: {usage}", "", "config groups (group=choice; the first is the default):",
            *(f"  {line}" for line in groups(defaults, conf)), "", "options (key=value; the value shown is the default):"]
    text += [f"  {line}" for line in option_lines(own)]
    for group in GROUP_OPTIONS[config_name]:
        text += [f"  {line}" for line in option_lines(conf.joinpath(group, f"{defaults[group]}.yaml").read_text(), f"{group}.")]
    text += ["", "Hydra's flags:", *(f"  {flag}" for flag in HYDRA_FLAGS)]
    return "\n".join(text)
