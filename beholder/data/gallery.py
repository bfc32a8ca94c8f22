"""Images from a gallery (local or S3) into batches: datasets, transforms and the training DataModule."""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from beholder.core.errors import MissingInput, UserError
from beholder.core.launch import pin_memory
from beholder.core.storage import Store, check_uri, join
from beholder.data.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, RAW_SUFFIXES, UnreadableImage, capture_time, decode_image
from beholder.data.labels import Label, drop_missing, parse_labels, regression_stats, split_labels, target_of
from beholder.technical.measures import ANALYSIS_SIDE, measure

log = logging.getLogger(__name__)


TILING_ASPECT = 2.0  # a photo this many times wider (or taller) than the network's input is seen as tiles


def tile_boxes(width: int, height: int, input_width: int, input_height: int) -> list[tuple[int, int, int, int]]:
    """Where to cut a photo into tiles of about the network input's shape along its long side: a
    panorama ``TILING_ASPECT`` times wider than the input, or more, is seen whole at the network's
    own resolution instead of squashed; anything closer is one tile, squashed as training saw it."""
    ratio = (width / height) / (input_width / input_height)
    count = round(max(ratio, 1 / ratio)) if max(ratio, 1 / ratio) >= TILING_ASPECT else 1
    if ratio >= 1:
        return [(round(i * width / count), 0, round((i + 1) * width / count), height) for i in range(count)]
    return [(0, round(i * height / count), width, round((i + 1) * height / count)) for i in range(count)]


class Tiled:
    """A photo into the network's inputs: (tiles, 3, H, W), each tile transformed by ``per_tile``
    (:func:`tile_boxes`; one tile for most photos). The network's features of the tiles are averaged."""

    def __init__(self, per_tile: T.Compose, height: int, width: int):
        self.per_tile, self.height, self.width = per_tile, height, width
        self.transforms = per_tile.transforms

    def __call__(self, picture) -> torch.Tensor:
        boxes = tile_boxes(*picture.size, self.width, self.height)
        if len(boxes) == 1:
            return self.per_tile(picture)[None]
        return torch.stack([self.per_tile(picture.crop(box)) for box in boxes])


def build_transform(data_config: dict, train: bool, augment: dict | None = None) -> Tiled:
    """Resize to the network's input size; on training batches also flip, crop and jitter. A photo
    far wider or taller than the input is cut into tiles first (:class:`Tiled`).

    The crop keeps the input's aspect ratio (a panorama stays a panorama) and covers at least
    ``augment.min_crop`` of it.
    """
    _, height, width = data_config["input_size"]
    interpolation = InterpolationMode(data_config.get("interpolation", "bilinear"))
    steps = [T.ToImage(), T.Resize((height, width), interpolation=interpolation, antialias=True)]
    if train:
        augment = augment or {}
        aspect = width / height
        steps += [
            T.RandomResizedCrop(
                (height, width),
                scale=(augment.get("min_crop", 0.7), 1.0),
                ratio=(aspect * 0.9, aspect / 0.9),
                interpolation=interpolation,
                antialias=True,
            ),
            T.RandomHorizontalFlip(),
        ]
        jitter = augment.get("jitter", 0.0)
        if jitter:
            steps.append(T.ColorJitter(brightness=jitter, contrast=jitter))
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(data_config["mean"], data_config["std"])]
    return Tiled(T.Compose(steps), height, width)


class GalleryDataset(Dataset):
    """Images under ``root`` by relative path. An unreadable file yields its reason, not an error.

    ``targets`` (optional) gives each image's (tier, regression target). ``cache`` (optional, a
    :class:`beholder.models.features.FeatureCache` of the network's frozen features): an image whose
    features it holds yields them (``features``) instead of its picture. ``measures``: each image's
    technical measures too (``technical``; :mod:`beholder.technical.measures`), from the same decode,
    kept in ``measures_cache`` (a FeatureCache) when given. A photo whose features and measures are
    both cached is not even decoded.
    """

    def __init__(self, root, images, store, transform, targets=None, max_pixels=DEFAULT_MAX_PIXELS, cache=None, measures=False,
                 measures_cache=None):
        self.root, self.images, self.store, self.transform = root, list(images), store, transform
        self.targets, self.max_pixels, self.cache = targets, max_pixels, cache
        self.measures, self.measures_cache = measures, measures_cache
        resize = next((t for t in transform.transforms if isinstance(t, T.Resize)), None)
        self.min_size = (resize.size[1], resize.size[0]) if resize else None  # JPEGs may decode at a reduced scale down to this

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        sample = {"index": index, "image_path": image}
        features = measured = None
        try:
            data = self.store.read(join(self.root, image))
            if self.cache is not None or self.measures_cache is not None:
                sample["content"] = hashlib.sha256(data).hexdigest()
            if self.cache is not None:
                features, _ = self.cache.get(sample["content"], 0)
            if self.measures and self.measures_cache is not None:
                measured, _ = self.measures_cache.get(sample["content"], 0)
            if features is None or (self.measures and measured is None):
                picture = decode_image(data, self.max_pixels, self.min_size, ANALYSIS_SIDE if self.measures else 0)
        except (UnreadableImage, OSError) as error:  # the file's content is for good; a failed read (permissions) may pass
            return {**sample, "error": str(error) or type(error).__name__, "retry": isinstance(error, OSError)}
        if self.measures and measured is None:
            measured = measure(picture)
            if self.measures_cache is not None:
                self.measures_cache.put(sample["content"], 0, measured)
        if self.measures:
            sample["technical"] = torch.from_numpy(np.asarray(measured, dtype=np.float32))
        if features is not None:
            sample["features"] = torch.from_numpy(features)
        else:
            sample["image"] = self.transform(picture)
        sample["taken"] = capture_time(image, data)
        if self.targets is not None:
            sample["tier"], sample["target"] = self.targets[index]
        return sample


def raw_safe_workers(images, num_workers: int) -> dict:
    """DataLoader options for ``images``: LibRaw decodes with OpenMP threads, which can deadlock in a
    forked worker, so with camera RAW files among them the workers are started by a fork server
    (seconds more to start, once: they persist across epochs)."""
    if num_workers and any(str(image).lower().endswith(RAW_SUFFIXES) for image in images):
        return {"multiprocessing_context": "forkserver", "persistent_workers": True}
    return {}


def collate(samples: list[dict]) -> dict:
    """Stack the good samples; list the bad ones under ``skipped`` as (image path, reason), and
    under ``retry`` those whose reading failed for a reason that may pass. Samples
    with cached features come first (``cached``), then the pictures (``image``: every picture's tiles
    one after the other, ``tiles``: how many each has, and their ``content``); ``technical``: the
    measures of each, in the same order."""
    cached = [s for s in samples if "features" in s]
    pictures = [s for s in samples if "image" in s]
    good = cached + pictures
    batch = {"skipped": [(s["image_path"], s["error"]) for s in samples if "error" in s],
             "retry": [s["image_path"] for s in samples if s.get("retry")]}
    batch["index"] = torch.tensor([s["index"] for s in good], dtype=torch.long)
    batch["image_path"] = [s["image_path"] for s in good]
    batch["taken"] = [s.get("taken") for s in good]
    if cached:
        batch["cached"] = torch.stack([s["features"] for s in cached])
    if pictures:
        batch["image"] = torch.cat([s["image"] for s in pictures])
        batch["tiles"] = torch.tensor([len(s["image"]) for s in pictures], dtype=torch.long)
        batch["content"] = [s.get("content") for s in pictures]
    if good and "technical" in good[0]:
        batch["technical"] = torch.stack([s["technical"] for s in good])
    if good:
        if "tier" in good[0]:
            batch["tier"] = torch.tensor([s["tier"] for s in good], dtype=torch.long)
            batch["target"] = torch.tensor([s["target"] for s in good], dtype=torch.float32)
    return batch


def tier_weights(tiers: list[int], strength: float) -> list[float]:
    """Sampling weights that draw rare tiers more: ``strength`` 1 evens tiers out, 0 leaves them."""
    counts = Counter(tiers)
    return [(1.0 / counts[t]) ** strength for t in tiers]


class GalleryDataModule(pl.LightningDataModule):
    """A labelled gallery split into train/val/test. ``root`` and ``labels`` are local or s3:// URIs."""

    def __init__(
        self,
        root: str,
        labels: str,
        score_column: str | None = None,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 2,
        image_size: list[int] | None = None,
        oversample: bool = True,
        oversample_strength: float = 1.0,
        augment: dict | None = None,
        on_missing: str = "error",
        endpoint_url: str | None = None,
        cache_dir: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        group_by: str | None = None,
        group_pattern: str | None = None,
    ):
        super().__init__()
        self.group_by, self.group_pattern = group_by or None, group_pattern or None
        self.root = check_uri(root, "gallery")
        self.labels_uri = check_uri(labels, "labels")
        self.score_column = score_column or None
        self.seed, self.batch_size, self.num_workers = seed, batch_size, num_workers
        self.image_size = list(image_size) if image_size else None
        self.oversample, self.oversample_strength = oversample, oversample_strength
        self.augment, self.on_missing, self.max_pixels = dict(augment or {}), on_missing, max_pixels
        self.store = Store(endpoint_url, cache_dir)
        self.splits: dict[str, list[Label]] | None = None
        self.data_config: dict | None = None  # the network's input size and normalisation

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        try:
            text = self.store.read(self.labels_uri).decode("utf-8-sig")
        except FileNotFoundError:
            raise MissingInput(f"labels: no such file {self.labels_uri}") from None
        labels = parse_labels(text, self.labels_uri, self.score_column, self.group_by, self.group_pattern)
        try:
            available = set(self.store.list(self.root))
        except FileNotFoundError:
            raise MissingInput(f"gallery: no such folder {self.root}") from None
        labels = drop_missing(labels, available, self.root, self.on_missing)
        self.splits = split_labels(labels, self.seed)
        for name, rows in self.splits.items():
            if not rows:
                raise UserError(f"{self.labels_uri}: the {name} split is empty ({len(labels)} labelled images)")

    def regression_stats(self) -> dict:
        self.setup()
        return regression_stats(self.splits["train"])

    def dataset(self, split: str, train: bool) -> GalleryDataset:
        if self.data_config is None:
            raise RuntimeError("GalleryDataModule.data_config is not set: give it the network's data config")
        rows = self.splits[split]
        tier_values = regression_stats(self.splits["train"])["tier_values"]
        return GalleryDataset(
            self.root,
            [lb.image for lb in rows],
            self.store,
            build_transform(self.data_config, train, self.augment),
            targets=[(lb.tier, target_of(lb, tier_values)) for lb in rows],
            max_pixels=self.max_pixels,
        )

    def _loader(self, dataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=pin_memory(self.trainer),
            **{"persistent_workers": self.num_workers > 0, **raw_safe_workers(dataset.images, self.num_workers)},
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train=True)
        # Drop a last partial batch (its few images would get a whole step) only when each
        # process still has a full batch: under DDP each rank sees len / world_size images.
        world_size = self.trainer.world_size if self.trainer is not None else 1
        drop_last = math.ceil(len(dataset) / world_size) > self.batch_size
        if not self.oversample:
            return self._loader(dataset, shuffle=True, drop_last=drop_last)
        weights = tier_weights([lb.tier for lb in self.splits["train"]], self.oversample_strength)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = WeightedRandomSampler(weights, num_samples=len(weights), replacement=True, generator=generator)
        return self._loader(dataset, sampler=sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val", train=False))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", train=False))


def list_gallery(store: Store, root: str, option: str = "gallery", ignored: dict[str, list[str]] | None = None) -> dict[str, str]:
    """Every image file under ``root`` (jpg, jpeg, png, webp, tif; any case), sorted, each with its
    version (:meth:`Store.versions`, which fills ``ignored`` with what it leaves out); an error
    naming ``option`` when the folder is missing or holds none."""
    try:
        images = store.versions(root, IMAGE_SUFFIXES, ignored)
    except FileNotFoundError:
        raise MissingInput(f"{option}={root}: no such folder") from None
    if not images:
        raise UserError(f"{option}={root}: no images (jpg, jpeg, png, webp, tif) found")
    return images
