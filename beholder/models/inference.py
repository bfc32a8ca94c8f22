"""In-process prediction over a few images (the labeller's order, a model's near-copy calibration);
``beholder predict`` is the resumable, multi-device way for whole galleries."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from beholder.data.gallery import GalleryDataset, build_transform, collate, raw_safe_workers
from beholder.models.module import BeholderModule


@torch.no_grad()
def predictions(module: BeholderModule, root: str, images: list[str], store, batch_size: int = 32, num_workers: int = 2) -> Iterator[dict]:
    """``module.predict_step``'s output for each batch of ``images`` under ``root``, with the
    evaluation transforms of training."""
    dataset = GalleryDataset(root, images, store, build_transform(module.net.data_config, train=False))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, **raw_safe_workers(images, num_workers))
    for i, batch in enumerate(loader):
        yield module.predict_step(batch, i)


def score_images(module: BeholderModule, root: str, images: list[str], store, batch_size: int = 32, num_workers: int = 2) -> dict[str, tuple[float, int]]:
    """Image -> (score, predicted tier); unreadable ones are left out."""
    results = {}
    for out in predictions(module, root, images, store, batch_size, num_workers):
        if "scores" in out:
            results.update(zip(out["image_path"], zip(out["scores"].tolist(), out["tiers"].tolist())))
    return results
