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


def option_lines(text: str, prefix: str = "") -> list[str]:
    """The option lines of a config file (``key: value  # what it does``), nested blocks as
    ``block.key``; the defaults list, Hydra's block, ``_target_`` and plain aliases of another
    option (``root: ${gallery}``) left out."""
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
            block = key if not value else None
            if block or key in ("defaults", "_target_") or re.fullmatch(r"\$\{\w+\}", value):
                continue
            lines.append(f"{prefix}{key}={value}" + (f"  {about}" if about else ""))
        elif block and block not in ("defaults", "hydra") and indent == 2 and key != "_target_" and not re.fullmatch(r"\$\{\w+\}", value):
            lines.append(f"{prefix}{block}.{key}={value}" + (f"  {about}" if about else ""))
    return lines


def groups(config_name: str, conf) -> list[str]:
    """Each config group the command reads, with its choices, the default first."""
    defaults = re.findall(r"^\s+- (?:override )?/?(\w+): (\w+)", conf.joinpath(f"{config_name}.yaml").read_text(), re.M)
    listed = []
    for group, default in defaults:
        if group == "hydra" or not conf.joinpath(group).is_dir():
            continue
        choices = sorted(p.name[:-5] for p in conf.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        listed.append(f"{group}={'|'.join([default, *[c for c in choices if c != default]])}")
    return listed


def help_text(config_name: str) -> str:
    conf = files("beholder.conf")
    own = conf.joinpath(f"{config_name}.yaml").read_text()
    usage = own.splitlines()[0].lstrip("# ")
    text = [f"usage: {usage}", "", "config groups (group=choice; the first is the default):",
            *(f"  {line}" for line in groups(config_name, conf)), "", "options (key=value; the value shown is the default):"]
    text += [f"  {line}" for line in option_lines(own)]
    for group in GROUP_OPTIONS[config_name]:
        name = "xception" if group == "backbone" else "default"
        text += [f"  {line}" for line in option_lines(conf.joinpath(group, f"{name}.yaml").read_text(), f"{group}.")]
    text += ["", "Hydra's flags:", *(f"  {flag}" for flag in HYDRA_FLAGS)]
    return "\n".join(text)
