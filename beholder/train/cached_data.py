"""Training on cached frozen features: the labelled splits as feature vectors (computed once by
beholder/models/features.py), a random cached view per draw in training, oversampled like the images."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from beholder.core.errors import UserError
from beholder.data.gallery import GalleryDataModule, tier_weights
from beholder.data.labels import regression_stats, target_of
from beholder.models.features import cached_features
from beholder.models.heads import oversamples_tiers


def labelled_gallery(cfg: DictConfig) -> GalleryDataModule:
    """``cfg.data``'s labelled gallery, oversampling rare tiers as ``data.oversample`` says (null: as the head wants)."""
    oversample = cfg.data.oversample
    return instantiate(cfg.data, oversample=oversamples_tiers(cfg.head) if oversample is None else oversample)


class FeatureRows(Dataset):
    """Cached feature views of labelled images: training draws a random view each time, the rest view 0."""

    def __init__(self, features: torch.Tensor, tiers: list[int], targets: list[float], images: list[str], train: bool):
        self.features, self.tiers, self.targets, self.images, self.train = features, tiers, targets, images, train

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        view = int(torch.randint(len(self.features[index]), ())) if self.train else 0
        return index, view


class CachedFeatureDataModule(pl.LightningDataModule):
    """The splits of a :class:`GalleryDataModule` as cached feature vectors of ``net``.

    ``with_splits`` gives the same features split otherwise (the folds of ``cv=K``)."""

    def __init__(self, gallery: GalleryDataModule, net, views: int, cache_dir: str):
        super().__init__()
        self.gallery, self.batch_size, self.seed = gallery, gallery.batch_size, gallery.seed
        gallery.setup()
        self.splits = gallery.splits
        rows = [lb for split in self.splits.values() for lb in split]
        self.features, self.skipped = cached_features(
            net, gallery.root, sorted({lb.image for lb in rows}), gallery.store, gallery.augment, views, cache_dir,
            gallery.max_pixels, num_workers=gallery.num_workers,
        )
        self.tier_values = regression_stats(self.splits["train"])["tier_values"]

    def with_splits(self, splits: dict, tier_values: list[float]) -> CachedFeatureDataModule:
        other = copy.copy(self)
        pl.LightningDataModule.__init__(other)
        other.splits, other.tier_values = splits, tier_values
        return other

    def probe_inputs(self, split: str) -> tuple[torch.Tensor, dict]:
        """View 0 of every image of ``split``, and its tiers and targets, for the ridge probe."""
        rows = self.rows(split)
        groups = {lb.image: lb.group for lb in self.splits[split]}
        return rows.features[:, 0], {"tier": torch.tensor(rows.tiers), "target": torch.tensor(rows.targets),
                                     "group": [groups[image] for image in rows.images]}

    def rows(self, split: str, train: bool = False) -> FeatureRows:
        labels = [lb for lb in self.splits[split] if lb.image in self.features]
        if not labels:
            raise UserError(f"{self.gallery.labels_uri}: no readable images in the {split} split")
        return FeatureRows(
            torch.stack([self.features[lb.image] for lb in labels]), [lb.tier for lb in labels],
            [target_of(lb, self.tier_values) for lb in labels], [lb.image for lb in labels], train,
        )

    def loader(self, rows: FeatureRows, **kwargs) -> DataLoader:
        def collate(picks):
            index = torch.tensor([i for i, _ in picks])
            view = torch.tensor([v for _, v in picks])
            return {
                "features": rows.features[index, view], "index": index, "skipped": [],
                "image_path": [rows.images[i] for i in index.tolist()],
                "tier": torch.tensor([rows.tiers[i] for i in index.tolist()]),
                "target": torch.tensor([rows.targets[i] for i in index.tolist()], dtype=torch.float32),
            }

        return DataLoader(rows, batch_size=self.batch_size, collate_fn=collate, **kwargs)

    def train_dataloader(self) -> DataLoader:
        rows = self.rows("train", train=True)
        drop_last = len(rows) > self.batch_size
        if not self.gallery.oversample:
            return self.loader(rows, shuffle=True, drop_last=drop_last)
        weights = tier_weights(rows.tiers, self.gallery.oversample_strength)
        generator = torch.Generator().manual_seed(self.seed)
        return self.loader(rows, sampler=WeightedRandomSampler(weights, len(weights), generator=generator), drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.rows("val"))

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.rows("test"))
