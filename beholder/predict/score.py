"""In-process scoring of a few images (the labeller's order); predict is the resumable way for whole galleries."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from beholder.data.gallery import GalleryDataset, build_transform, collate, raw_safe_workers
from beholder.models.module import BeholderModule


@torch.no_grad()
def score_images(module: BeholderModule, root: str, images: list[str], store, batch_size: int = 32, num_workers: int = 2) -> dict[str, tuple[float, int]]:
    """In-process scoring of a few images: image -> (score, predicted tier); unreadable ones are left out.
    (``beholder predict`` is the resumable, multi-device way for whole galleries.)"""
    dataset = GalleryDataset(root, images, store, build_transform(module.net.data_config, train=False))
    results = {}
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, **raw_safe_workers(images, num_workers))
    for i, batch in enumerate(loader):
        out = module.predict_step(batch, i)
        if "scores" in out:
            results.update(zip(out["image_path"], zip(out["scores"].tolist(), out["tiers"].tolist())))
    return results
