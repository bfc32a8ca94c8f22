"""The app as installed and as laid out: one command, light commands without torch, layers that
only import downwards, every package in the wheel, and the wheel working outside the repository."""

import argparse
import ast
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import tomllib
from omegaconf import OmegaConf

from beholder.cli import COMMANDS, HYDRA, main
from beholder.core.entry import misread_option
from beholder.core.help import help_text
from beholder.core.vocabulary import respell, respell_config

from conftest import PYTHON, ROOT, TINY, compose_predict, compose_train, make_gallery

# Each package may import those of lower layers; the commands (cli.py, __main__.py) import anything.
LAYERS = {"core": 0, "conf": 0, "data": 1, "default_model": 1, "technical": 1, "models": 2, "decisions": 2, "train": 3, "search": 3, "ratings": 3,
          "predict": 4, "label": 5}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names] if isinstance(node, ast.Import) else []
        found |= {name.split(".")[1] for name in names if name.startswith("beholder.")}
    return found


def test_packages_import_only_downwards():
    upward = []
    for path in sorted((ROOT / "beholder").rglob("*.py")):
        parts = path.relative_to(ROOT / "beholder").with_suffix("").parts
        if parts[-1] in ("cli", "__main__") or parts[0] in ("__init__", "cli", "__main__"):
            continue
        own = LAYERS[parts[0]]
        upward += [f"{'/'.join(parts)} imports beholder.{p}" for p in imported_packages(path) if LAYERS[p] > own]
    assert upward == []


def test_no_package_imports_one_that_imports_it_back():
    """Package-level cycles, counting every module (the commands' cli.py too): none."""
    imports: dict[str, set[str]] = {}
    for path in (ROOT / "beholder").rglob("*.py"):
        parts = path.relative_to(ROOT / "beholder").with_suffix("").parts
        package = parts[0] if len(parts) > 1 else None
        if package:
            imports.setdefault(package, set()).update(imported_packages(path) - {package})

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in imports.get(start, ()))

    assert sorted(package for package in imports if reaches(package, package, set())) == []


def test_every_package_is_in_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "beholder").rglob("__init__.py")}
    assert found | {"beholder.conf"} == listed


def test_light_commands_start_without_torch():
    script = ("import sys\nfrom beholder.cli import main\n"
              "for words in (['ratings'], ['label', 'export'], ['ingest'], ['demo'], ['train'], ['predict']):\n"
              "    try:\n        main([*words, '--help'])\n    except SystemExit:\n        pass\n"
              "print('torch' in sys.modules, 'pytorch_lightning' in sys.modules)")
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "False False", result.stderr


def test_the_old_spellings_still_work_with_a_note(capsys):
    assert respell(["import", "x", "--root", "a", "--index=b"], ("--root", "--index")) == ["import", "x", "--gallery", "a", "--scored=b"]
    assert respell(["--output", "culled/"], ("--output",)) == ["--scored", "culled/"]
    assert respell(["--scores", "o/scores.csv", "--k=5", "--workers", "2"], ("--scores", "--k", "--workers")) == [
        "--scored", "o/scores.csv", "--count=5", "--downloads", "2"]
    cfg = compose_predict(["ckpt_path=model.ckpt", "gallery=g", "output=o"])
    respell_config(cfg, {"ckpt_path": "ckpt"})
    assert cfg.ckpt == "model.ckpt" and cfg.ckpt_path is None
    cfg = compose_train(["data.root=photos", "data.labels=photos/labels.csv", "ckpt_path=last"])
    respell_config(cfg, {"data.root": "gallery", "data.labels": "labels", "ckpt_path": "resume"})
    assert (cfg.gallery, cfg.labels, cfg.resume, cfg.data.root) == ("photos", "photos/labels.csv", "last", "photos")
    cfg = compose_train(["gallery=new", "labels=new/labels.csv"])
    respell_config(cfg, {"data.root": "gallery", "data.labels": "labels"})  # the interpolation is no old spelling
    assert cfg.data.root == "new"
    notes = capsys.readouterr().err
    assert "--root is now spelled --gallery" in notes and "ckpt_path= is now spelled ckpt=" in notes and "data.root= is now spelled gallery=" in notes
    assert notes.count("note:") == 10 and "--output is now spelled --scored; the old spelling stops working in beholder 1.0" in notes


@pytest.mark.parametrize("command", ["train", "predict"])
def test_help_explains_every_option(command):
    text = help_text(command)
    cfg = (compose_train if command == "train" else compose_predict)(["gallery=g", "labels=l"] if command == "train" else ["gallery=g", "output=o"])
    listed = {line.split("=")[0].strip() for line in text.splitlines() if line.startswith("  ") and "=" in line}
    assert {key for key in cfg if key not in ("data", "backbone", "trainer", "technical", "head", "optimizer")} - listed == set()
    for group in ("data", "backbone", "trainer", "technical"):
        if group in cfg:
            unlisted = {f"{group}.{key}" for key in cfg[group]  # an alias (data.root: ${gallery}) is set by the option it names
                        if key != "_target_" and not OmegaConf.is_interpolation(cfg[group], key)}
            assert {key for key in unlisted if not any(line.startswith(key) for line in listed)} == set()  # data.augment: its keys
    assert "cull=auto  How hard to cull" in text or command == "train"


def test_an_option_misread_is_one_line_naming_it():
    assert misread_option("train", ["galery=x", "labels=y"]) == "galery: no such option; did you mean gallery?"
    assert misread_option("train", ["gallery=x", "labels=y", "trainer.max_epoch=3"]) == "trainer.max_epoch: no such option; did you mean trainer.max_epochs?"
    assert misread_option("train", ["head=nope", "gallery=x", "labels=y"]) == "head=nope: not one of the choices (ordinal, regression, softmax)"
    assert misread_option("train", ["gallery=x"]) == "labels: required; give labels=..."
    assert misread_option("train", ["data.root=x", "data.labels=y"]) is None  # the old spellings set them
    assert misread_option("predict", []) == "gallery, output: required; give gallery=... output=..."
    assert misread_option("predict", ["gallery=x", "output=y", "-m"]) is None  # Hydra's own flags: Hydra's to read
    # the schemas' types (conf/schema.py), and what types cannot say
    assert misread_option("train", ["gallery=x", "labels=y", "cv=five"]) == "cv=five: expected a whole number"
    assert misread_option("train", ["gallery=x", "labels=y", "data.batch_sise=8"]) == "data.batch_sise: no such option; did you mean data.batch_size?"
    assert misread_option("train", ["gallery=x", "labels=y", "backbone.levels=maybe"]) == "backbone.levels=maybe: expected true or false"
    assert misread_option("train", ["gallery=x", "labels=y", "cv=1"]) == "cv=1: give K >= 2 folds, or 0 for one train/val split"
    assert misread_option("train", ["gallery=x", "labels=y", "feature_views=0"]) == "feature_views=0: give 1 or more"
    assert misread_option("predict", ["gallery=x", "output=y", "keep_top=2"]) == "keep_top=2: give a share in (0, 1]"
    assert misread_option("predict", ["gallery=x", "output=y", "keep_top=0.2", "threshold=0.5"]).startswith("give at most one of")
    assert misread_option("predict", ["gallery=x", "output=y", "cull=harsh"]) == "cull='harsh': give one of auto, promise, gentle, normal, hard"
    assert misread_option("train", ["gallery=x", "labels=y", "experiment=best", "callbacks=early_stopping", "logger=csv"]) is None
    result = subprocess.run([PYTHON, "-m", "beholder", "predict", "gallery=x", "outptu=y"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == "beholder: error: outptu: no such option; did you mean output?\n" and not result.stdout


@pytest.mark.slow
def test_the_wheel_works_outside_the_repository(tmp_path):
    """Build the wheel, install it into a fresh environment (its dependencies seen from this one's
    site-packages, not this checkout), and from an empty folder: train, predict, serve the labeller."""
    source = tmp_path / "source"  # setuptools builds in the tree it is given: a copy, so the checkout stays as it is
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "outputs", "demo", "build", "dist", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "tests", "bench"))
    subprocess.run([PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("beholder-*.whl"))
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True).stdout.strip()
    deps = subprocess.run([PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(deps + "\n")  # a path line: its own .pth files (the editable beholder) stay unread
    subprocess.run([PYTHON, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)], check=True, capture_output=True, timeout=300)
    work = tmp_path / "empty"
    work.mkdir()
    gallery = make_gallery(work / "photos")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    beholder = [str(python), "-m", "beholder"]
    where = subprocess.run([*beholder[:1], "-c", "import beholder; print(beholder.__file__)"], cwd=work, env=env, capture_output=True, text=True)
    assert where.stdout.startswith(site), where.stdout + where.stderr
    trained = subprocess.run([*beholder, "train", *TINY, f"gallery={gallery}", f"labels={gallery}/labels.csv", "hydra.run.dir=run"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0 and "beholder: training finished" in trained.stdout, trained.stderr[-2000:]
    scored = subprocess.run([*beholder, "predict", "ckpt=run/checkpoints/best.ckpt", f"gallery={gallery}", "output=scored",
                             "num_workers=0", "trainer.enable_progress_bar=false"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert scored.returncode == 0 and (work / "scored" / "scores.csv").exists(), scored.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*beholder, "label", "--gallery", str(gallery), "--db", "labels.sqlite", "--port", str(port)],
                              cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        pages = {}
        for path in ("/", "/static/labeller.css", "/static/common.js"):
            for _ in range(300):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                        pages[path] = (response.status, response.read().decode())
                    break
                except OSError:
                    time.sleep(0.2)
        assert [pages[p][0] for p in ("/", "/static/labeller.css", "/static/common.js")] == [200, 200, 200]
        assert "labeller.css" in pages["/"][1] and "{" in pages["/static/labeller.css"][1] and "function" in pages["/static/common.js"][1]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_flag_of_every_command_is_explained(monkeypatch):
    parsers = []

    def keep_parser(self, args=None, namespace=None):
        parsers.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", keep_parser)
    for words in (words for words in COMMANDS if words not in HYDRA):
        with pytest.raises(SystemExit):
            main([*words.split(), "--help"])
    parsers += [sub for parser in parsers for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for sub in action.choices.values()]
    unexplained = [f"{parser.prog} {action.dest}" for parser in parsers for action in parser._actions
                   if not action.help and not isinstance(action, argparse._HelpAction)]
    unfinished = [parser.prog for parser in parsers if not (parser.description or "").rstrip().endswith((".", ")"))]
    assert len(parsers) >= len(COMMANDS) - len(HYDRA) and unexplained == [] and unfinished == []


def test_every_library_beholder_imports_is_declared():
    """Each third-party module imported under beholder/ comes from a distribution pyproject.toml
    names (its dependencies, or an extra for an optional part)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", requirement)[0].lower().replace("_", "-")
                for requirement in project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]}
    distributions = importlib.metadata.packages_distributions()
    imported = set()
    for path in (ROOT / "beholder").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name != "beholder"}
    undeclared = {name: distributions.get(name) for name in third_party
                  if not {d.lower().replace("_", "-") for d in distributions.get(name, [name])} & declared}
    assert undeclared == {}


def test_a_missing_optional_part_is_named_with_its_extra():
    script = ("import sys\nfor name in ('fastapi', 'rawpy', 'pillow_heif'):\n    sys.modules[name] = None  # as if not installed\n"
              "from beholder.cli import main\nfrom beholder.data.images import UnreadableImage, decode_image\n"
              "for data in (b'\\0\\0\\0\\x18ftypheic' + bytes(16), b'\\0\\0\\0\\x18ftypcrx ' + bytes(16)):\n"
              "    try:\n        decode_image(data)\n    except UnreadableImage as error:\n        print(error)\n"
              "print(main(['label', '--gallery', '.', '--db', 'x.sqlite']))")
    result = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines() == ["a HEIF/HEIC file; reading it needs pillow_heif: pip install 'beholder[formats]'",
                                          "a camera RAW file; reading it needs rawpy: pip install 'beholder[formats]'", "2"], result.stderr
    assert result.stderr == "beholder: error: beholder label needs fastapi: pip install 'beholder[web]'\n"


def test_every_command_takes_a_path_as_a_flag_or_as_key_value():
    from beholder.core.entry import flags_as_options
    from beholder.core.vocabulary import CommandParser

    assert flags_as_options(["--gallery", "Tom's wedding", "--output=out", "--keep-top", "0.3", "--xmp", "--cfg", "job", "-m", "head=a,b"]) == [
        "gallery=Tom's wedding", "output=out", "keep_top=0.3", "xmp=true", "--cfg", "job", "-m", "head=a,b"]
    parser = CommandParser(prog="beholder similar")
    parser.add_argument("--scored")
    parser.add_argument("source")
    args = parser.parse_args(["scored=culled", "day=1"])  # a positional folder named day=1 stays one
    assert (args.scored, args.source) == ("culled", "day=1")
    result = subprocess.run([PYTHON, "-m", "beholder", "predict", "--gallery", "g", "--output", "o", "--keep-top", "2"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == "beholder: error: keep_top=2: give a share in (0, 1]\n"
