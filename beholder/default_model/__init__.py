"""beholder's default taste model: a crowd model shipped inside the package, so that a photographer
without crowd-rated photos has a model to start from (``predict.py`` without ``ckpt``,
``experiment=personal`` without ``base_ckpt``). ``MODEL_CARD.md`` beside it says what it was trained
on, under which terms, how well it ranks out of fold, and what it is not for; ``python
bench/default_model.py --oasis DIR`` (``make default-model``) trains it again, the same way.
"""

from __future__ import annotations

from importlib import resources

from beholder.core.errors import MissingInput

CHECKPOINT = "crowd.ckpt"
CARD = "MODEL_CARD.md"


def name() -> str:
    """How summaries name the default model: what it learnt, and where its card is in this installation."""
    return f"beholder's default crowd model (OASIS beauty ratings; its card: {resources.files(__name__).joinpath(CARD)})"


def checkpoint_path() -> str:
    """The shipped checkpoint's path; one line when this installation has none."""
    path = resources.files(__name__).joinpath(CHECKPOINT)
    if not path.is_file():
        raise MissingInput("no default model in this installation: give ckpt=FILE (or build it: make default-model)")
    return str(path)
