"""What a run scores: the gallery as it is now, less what earlier runs into the same output scored already."""

from __future__ import annotations

import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass

import pytorch_lightning as pl
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from beholder.core.errors import UserError
from beholder.core.launch import check_shared_folder, pin_memory
from beholder.core.storage import Store, exclusive_lock, file_digest, is_s3, join
from beholder.data.gallery import collate, list_gallery, raw_safe_workers
from beholder.predict.shards import RowCheck, bind_run, model_of, read_shards
from beholder.technical.measures import measures_version

PARTIAL = ".beholder-partial"


LOCK = "lock"  # in PARTIAL: held by the run writing into the output


@dataclass
class Plan:
    """What a run starts from: the gallery's files with their versions, those still to score, and
    why earlier results were dropped."""
    versions: dict[str, str]
    todo: list[str]
    restarted: str | None
    outdated: set[str]
    checkpoint: str
    gone: int  # images earlier results of this run name that are no longer in the gallery
    known: int  # images earlier results name at all (0: the first run into this output)
    ignored: dict[str, list[str]]  # files of the gallery that are not scored, by why (other types, dangling links, names)
    retried: int  # images skipped by an earlier run for a reason that may have passed (permissions), tried again
    damaged: int  # rows of earlier results that were not what beholder writes: their images scored again
    foreign: int  # rows another model scored into the same output meanwhile: their images scored again


def plan_run(cfg: DictConfig, store: Store, gallery: str, output: str, partial: str, ckpt_path: str, check: RowCheck,
             lock: ExitStack) -> Plan:
    """The plan; from the moment the output is known to be writable, ``lock`` holds it (a local output):
    a second predict into the same output stops at once instead of mixing its rows with this one's."""
    ignored: dict[str, list[str]] = {}
    versions = list_gallery(store, gallery, ignored=ignored)
    check_writable(store, output)
    if not is_s3(output):
        lock.enter_context(exclusive_lock(join(partial, LOCK), f"output={output}"))
    # Results so far count only for this checkpoint, this gallery and each file as it is now.
    checkpoint = file_digest(ckpt_path)
    technical = measures_version() if cfg.technical.enabled else None
    restarted = bind_run(store, partial, {"checkpoint": checkpoint, "gallery": gallery, "embeddings": bool(cfg.embeddings), "technical": technical})
    seen: set[str] = set()
    rows = read_shards(store, partial, versions, model_of(checkpoint), check, seen)
    retry = rows.retry & set(versions)
    todo = [image for image in versions if image not in rows.scored and (image not in rows.skipped or image in retry)]
    return Plan(versions, todo, restarted, rows.outdated, checkpoint, len(seen - set(versions)), len(seen), ignored, len(retry),
                rows.damaged, rows.foreign)


class PendingImages(pl.LightningDataModule):
    """The images still to score, decided once by the first process and sent to the others: every
    process divides the same list, so each image is read by one process only, even when the
    gallery changes while the processes start."""

    def __init__(self, output: str, plan, dataset, batch_size: int, num_workers: int):
        super().__init__()
        self.output, self.make_plan, self.dataset = output, plan, dataset
        self.batch_size, self.num_workers = batch_size, num_workers
        self.plan, self.planned_at = None, None
        self.lock = ExitStack()  # the output's lock, held by the first process from the plan to the end of the run

    @property
    def versions(self) -> dict[str, str]:
        return self.plan.versions

    def setup(self, stage: str) -> None:
        state, failure = None, None
        if self.trainer.is_global_zero:
            try:
                state = ("plan", self.make_plan(self.lock))
            except Exception as error:
                failure = error
                state = ("error", str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}")
        kind, value = self.trainer.strategy.broadcast(state, src=0)
        if failure is not None:
            raise failure
        if kind == "error":
            raise UserError(value)
        self.plan, self.planned_at = value, time.perf_counter()
        if not is_s3(self.output):
            check_shared_folder(self.trainer, self.output, "output")

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(self.plan.todo), batch_size=self.batch_size, num_workers=self.num_workers,
                          collate_fn=collate, pin_memory=pin_memory(self.trainer), **raw_safe_workers(self.plan.todo, self.num_workers))


def check_writable(store: Store, output: str) -> None:
    probe = join(output, f".beholder-write-check-{uuid.uuid4().hex[:12]}")
    try:
        store.write(probe, b"ok")
        store.delete(probe)
    except Exception as error:
        raise UserError(f"output={output}: cannot write there ({type(error).__name__}: {error})") from None
