"""What a person reads in the terminal: beholder's own lines, not the libraries' chatter.

Lightning announces the devices, the seed, each restore, and advertises cloud products; botocore
says where it found the credentials; a deprecation inside Lightning's own code warns on every run.
None of it helps a photographer, and beholder prints its own summary. Lightning's warnings still
show; its model summary too, when ``trainer.enable_model_summary`` asks for it.
"""

from __future__ import annotations

import logging
import time
import warnings

CHATTY_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "botocore", "boto3")
KEPT_LOGGERS = ("pytorch_lightning.callbacks.model_summary", "lightning.pytorch.callbacks.model_summary")


def quiet_libraries() -> None:
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in KEPT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    # Raised inside pytorch_lightning/utilities/_pytree.py by newer torch; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # beholder keeps frozen normalisation layers (and frozen extractors) in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # A rerun of beholder predict that finds every image scored already predicts on an empty list, by design.
    warnings.filterwarnings("ignore", message=r"Total length of `DataLoader` across ranks is zero")


def printable(text: object) -> str:
    """``text`` safe for a terminal: control and format characters (an escape sequence in a file
    name, a carriage return, a right-to-left override) and bytes that are not UTF-8 shown escaped."""
    text = str(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name the file system gave as bytes that are not UTF-8
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


def line(name: str, value: object, width: int = 15) -> str:
    """One line of a summary: its name in a column of its own, then what was counted."""
    return f"  {name:<{width}} {printable(value)}"


def examples(items, shown: int = 3) -> str:
    return "e.g. " + "; ".join(printable(item) for item in list(items)[:shown])


def listed(name: str, problems: list[str], shown: int = 10) -> list[str]:
    """One line per problem, the first ``shown`` of them, then how many more."""
    lines = [line(name, problem) for problem in problems[:shown]]
    return lines + ([line("", f"... and {len(problems) - shown} more")] if len(problems) > shown else [])


def print_summary(title: str, lines: list[str]) -> None:
    """What a command did, after it: ``beholder: TITLE`` and its counted lines."""
    print("\n".join(["", f"beholder: {printable(title)}", *(printable(text) for text in lines)]), flush=True)


class ProgressLines:
    """Progress where no bar is drawn (a log, a pipe): ``verb N of TOTAL photos (P%), R photos/s,
    about T left``, each tenth of the work and at least every ``every`` seconds, so that a long
    step is never silent and a log is not flooded; nothing in the first ``quiet_for`` seconds (a
    step that the caches make quick says nothing)."""

    def __init__(self, total: int, verb: str, every: float = 30.0, note: str = "", quiet_for: float = 0.0):
        self.total, self.verb, self.every, self.note, self.quiet_for = total, verb, every, note, quiet_for
        self.done, self.started = 0, time.monotonic()
        self.said = self.started

    def advance(self, count: int) -> None:
        before, self.done = self.done, self.done + count
        now = time.monotonic()
        tenth = self.total and self.done * 10 // self.total > before * 10 // self.total
        if not self.total or now - self.started < self.quiet_for or not (tenth or now - self.said >= self.every):
            return
        self.said = now
        rate = self.done / max(now - self.started, 1e-9)
        left = f", about {duration((self.total - self.done) / rate)} left" if self.done < self.total else ""
        print(f"  {self.verb} {self.done} of {self.total} photos{self.note} ({100 * self.done // self.total}%), {rate:.1f} photos/s{left}",
              flush=True)


def duration(seconds: float) -> str:
    """``seconds`` as a person says it: 40 s, 3 min, 1 h 20 min."""
    if seconds < 90:
        return f"{max(round(seconds), 1)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60)} min"
