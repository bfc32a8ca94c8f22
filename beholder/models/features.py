"""Frozen features, computed once: a cache on disk keyed by image content, network and view, so that
a head trains on them in seconds (beholder/train/cached_data.py) instead of running the networks
every epoch, and predict reads them again.

Used when the backbone is wholly frozen (``backbone.trainable_blocks=0``) and ``feature_cache`` names a
folder. View 0 is what prediction sees (the evaluation transform), view 1 its mirror image, views 2 and
up random crops (``data.augment``), fixed per image and view so that a cached view is the same on every run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from beholder.core.console import ProgressLines
from beholder.core.errors import UserError
from beholder.core.storage import join, write_local_with
from beholder.data.gallery import build_transform, raw_safe_workers
from beholder.data.images import UnreadableImage, decode_image
from beholder.models.backbones import evaluation_mode

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


def network_key(net, augment: dict) -> str:
    """What a cached feature depends on besides the image: every weight and buffer of the frozen
    networks, the input sizes and normalisation, the levels option and the augmentation of views >= 2."""
    digest = hashlib.sha256()
    for module in (net.backbone, *net.extractors):
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    config = {k: v for k, v in net.data_config.items() if k in ("input_size", "mean", "std", "interpolation")}
    sizes = [net.sizes] if len(net.sizes) > 1 else []  # one size: the key it had before backbone.scales, so caches stay valid
    digest.update(json.dumps([CACHE_FORMAT, config, net.levels, augment, *sizes], sort_keys=True, default=list).encode())
    return digest.hexdigest()[:20]


class FeatureCache:
    """``<folder>/<network key>/<content sha256[:2]>/<sha256>.v<view>.npy``: one float32 vector each,
    of the networks' ``dimension``."""

    def __init__(self, folder: str, key: str, dimension: int):
        self.folder = os.path.join(os.path.expanduser(folder), key)
        self.dimension = dimension

    def path(self, content: str, view: int) -> str:
        return os.path.join(self.folder, content[:2], f"{content}.v{view}.npy")

    def get(self, content: str, view: int) -> tuple[np.ndarray | None, bool]:
        """(the cached vector or None, whether an entry was there but is not what its key promises:
        cut short, another length or type, not finite, a header claiming more than the file holds).
        A vector that is None is computed again, and a damaged entry replaced."""
        try:
            vector = np.load(self.path(content, view), mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None, False
        except (OSError, ValueError, EOFError):
            return None, True
        if vector.dtype != np.float32 or vector.shape != (self.dimension,) or not np.isfinite(vector).all():
            return None, True
        return np.array(vector), False

    def put(self, content: str, view: int, vector: np.ndarray) -> None:
        write_local_with(self.path(content, view), lambda f: np.save(f, vector.astype(np.float32)))


class ViewImages(Dataset):
    """Each image's cached views, and the pictures of the views not cached yet."""

    def __init__(self, root, images, store, data_config, augment, views, cache: FeatureCache, max_pixels):
        self.root, self.images, self.store, self.views, self.cache = root, images, store, views, cache
        self.plain = build_transform(data_config, train=False)
        self.augmented = build_transform(data_config, train=True, augment=augment)
        self.max_pixels = max_pixels
        _, height, width = data_config["input_size"]
        self.min_size = (width, height)

    def __len__(self):
        return len(self.images)

    def view(self, picture, content: str, view: int) -> torch.Tensor:
        """One view of the photo: its tiles (:class:`beholder.data.gallery.Tiled`), tiles x 3 x H x W."""
        if view == 0:
            return self.plain(picture)
        if view == 1:
            return self.plain(picture).flip(-1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(content[:15], 16) + view)
            return self.augmented(picture)

    def __getitem__(self, index):
        sample = {"index": index, "image_path": self.images[index]}
        try:
            data = self.store.read(join(self.root, self.images[index]))
            content = hashlib.sha256(data).hexdigest()
            found = {v: self.cache.get(content, v) for v in range(self.views)}
            cached = {v: vector for v, (vector, _) in found.items()}
            missing = [v for v, vector in cached.items() if vector is None]
            damaged = sum(bad for _, bad in found.values())
            pictures = []
            if missing:
                picture = decode_image(data, self.max_pixels, self.min_size)
                pictures = [self.view(picture, content, v) for v in missing]
        except (UnreadableImage, OSError) as error:
            return {**sample, "error": str(error) or type(error).__name__}
        return {**sample, "content": content, "cached": cached, "missing": missing, "pictures": pictures, "damaged": damaged}


@torch.no_grad()
def cached_features(net, root, images, store, augment: dict, views: int, cache_dir: str, max_pixels: int,
                    batch_size: int = 32, num_workers: int = 2) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``net.features`` of ``views`` views of each image: {image: views x F}, and {image: why} for
    the unreadable ones. Only what the cache lacks is computed, and it is cached at once."""
    if not net.frozen:
        raise UserError("feature_cache needs a wholly frozen backbone: set backbone.trainable_blocks=0 (or feature_cache=null)")
    cache = FeatureCache(cache_dir, network_key(net, augment), net.feature_mean.numel())
    dataset = ViewImages(root, images, store, net.data_config, augment, views, cache, max_pixels)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=list, **raw_safe_workers(images, num_workers))
    features, skipped, computed, damaged = {}, {}, 0, 0
    lines = ProgressLines(len(images), "features of", quiet_for=10.0)
    with evaluation_mode(net):
        for samples in loader:
            good = [s for s in samples if "error" not in s]
            damaged += sum(s["damaged"] for s in good)
            skipped.update((s["image_path"], s["error"]) for s in samples if "error" in s)
            pictures = [p for s in good for p in s["pictures"]]
            if pictures:
                tiles = torch.tensor([len(p) for p in pictures])
                vectors = net.photo_features(torch.cat(pictures), tiles).float().numpy()
                computed += len(pictures)
                row = 0
                for s in good:
                    for v in s["missing"]:
                        s["cached"][v] = vectors[row]
                        cache.put(s["content"], v, vectors[row])
                        row += 1
            for s in good:
                features[s["image_path"]] = torch.from_numpy(np.stack([s["cached"][v] for v in range(views)]))
            lines.advance(len(samples))
    log.info("features of %d images x %d views: %d computed, the rest from %s", len(features), views, computed, cache.folder)
    if damaged:
        print(f"beholder: {damaged} damaged entries of the feature cache {cache.folder} (cut short, wrong length or not finite) "
              "were computed again and replaced", flush=True)
    return features, skipped
