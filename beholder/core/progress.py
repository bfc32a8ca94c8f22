"""Progress that suits where the output goes, for training and prediction alike: Lightning's bar on
a terminal, plain counted lines in a log or a pipe."""

from __future__ import annotations

import sys

import pytorch_lightning as pl

from beholder.core.console import ProgressLines


class PlainProgress(pl.Callback):
    """Where no terminal shows a progress bar (a log file, a pipe, a CI job): one line per epoch,
    or per tenth of a prediction run, instead of a bar redrawn thousands of times."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero and not trainer.sanity_checking:
            watched = ("train/loss", "val/loss", "val_gr", getattr(trainer.checkpoint_callback, "monitor", None))
            shown = {k: float(v) for k, v in trainer.callback_metrics.items() if k in watched}
            print(f"  epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items())), flush=True)

    def on_predict_start(self, trainer, pl_module):
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        share = "" if trainer.world_size == 1 else " of this process's share"
        self.lines = ProgressLines(len(loader.sampler) if loader is not None and trainer.is_global_zero else 0, "scored", note=share)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.lines.advance(len(batch["image_path"]) + len(batch["skipped"]))


def progress(trainer_cfg) -> tuple[dict, list]:
    """A progress bar on a terminal (when ``trainer.enable_progress_bar``); elsewhere the
    trainer options and callbacks that print plain lines instead."""
    bar = bool(trainer_cfg.enable_progress_bar) and sys.stderr.isatty()
    return {"enable_progress_bar": bar}, ([] if bar else [PlainProgress()])
