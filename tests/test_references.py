"""Every file, module and ``_target_`` named in conf/, docs/, the README, pyproject and the code's own
docstrings and comments exists: a restructure leaves no name pointing nowhere."""

import importlib
import importlib.util
import re

import pytest

from conftest import ROOT

PLACES = ["README.md", "pyproject.toml", "Makefile", "conf/**/*.yaml", "docs/*.md", "beholder/**/*.py", "beholder/**/*.md", "bench/*.py",
          "tests/*.py", "train.py", "predict.py"]
FILE = re.compile(r"(?<![\w/.])((?:beholder|conf|bench|docs|tests)/[\w/.-]*\w\.(?:py|md|json|yaml|ckpt|html|css|js|sh))\b")
MODULE = re.compile(r"python -m ([\w.]+)")
TARGET = re.compile(r"_target_:\s*([\w.]+)")
SCRIPT = re.compile(r'^\w[\w-]* = "([\w.]+):(\w+)"', re.M)


def texts():
    for pattern in PLACES:
        for path in sorted(ROOT.glob(pattern)):
            if path.name != "test_references.py" and "static" not in path.parts:
                yield path.relative_to(ROOT), path.read_text(encoding="utf-8")


def resolves(dotted: str) -> bool:
    """A module, or a module's attribute (a class a ``_target_`` names)."""
    if importlib.util.find_spec(dotted.split(".")[0]) is None:
        return False
    module, _, attribute = dotted.rpartition(".")
    try:
        return importlib.util.find_spec(dotted) is not None
    except ModuleNotFoundError:
        pass
    return hasattr(importlib.import_module(module), attribute) if module else False


def dangling() -> list[str]:
    found = []
    for path, text in texts():
        found += [f"{path}: {name}" for name in FILE.findall(text) if not (ROOT / name).exists()]
        modules = MODULE.findall(text) + TARGET.findall(text)
        found += [f"{path}: {name}" for name in modules if name.split(".")[0] == "beholder" and not resolves(name)]
        found += [f"{path}: {module}:{attribute}" for module, attribute in SCRIPT.findall(text)
                  if path.name == "pyproject.toml" and not hasattr(importlib.import_module(module), attribute)]
    return found


def test_every_file_and_module_named_exists():
    assert dangling() == []


@pytest.mark.parametrize("dotted, exists", [("beholder.predict.run", True), ("beholder.models.heads.RegressionHead", True),
                                            ("beholder.search.similar", False), ("beholder.policy", False)])
def test_names_resolve_as_modules_or_their_attributes(dotted, exists):
    assert resolves(dotted) is exists
