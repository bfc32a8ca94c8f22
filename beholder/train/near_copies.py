"""Each model's own near-copy threshold, calibrated at training.

How alike two photos' embeddings are depends on the network that embeds them: a threshold chosen for
one model splits another's bursts or joins different photos. So after training, a model makes
near-copies of some of its own training photos (a slight turn and crop, another exposure, a
smaller size, a JPEG re-encode), embeds them beside the originals, and takes the strictest
similarity at which the groups (joined transitively, as predict's are) still hold nearly all pairs
of copies of one photo; where those groups would also join different photos, it gives up recall
for precision (a burst cull must not drop a different photo), and training says so. The checkpoint keeps it as
``group_similarity``, and ``beholder predict`` groups with it unless told otherwise.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from PIL import Image

from beholder.core.storage import Store, join
from beholder.data.images import UnreadableImage, decode_image
from beholder.models.inference import predictions
from beholder.models.module import BeholderModule
from beholder.search.bursts import burst_groups, pair_counts

SOURCES = 32  # training photos copied
COPIES = 3  # near-copies of each
GRID = np.round(np.arange(0.30, 0.995, 0.01), 2)
GROUP_RECALL = 0.95  # of the pairs of copies that the (transitive) groups join
GROUP_PRECISION = 0.9  # of the pairs the groups join, that are copies of one photo


def near_copy(image: Image.Image, rng: np.random.Generator) -> bytes:
    """A photo as a burst or a second export gives it: turned up to 2 degrees and cropped 4-10 % a
    side, exposure within a third of a stop, 70-100 % of the size, JPEG quality 70-95."""
    image = image.rotate(rng.uniform(-2, 2), resample=Image.BICUBIC)
    w, h = image.size
    left, top, right, bottom = rng.uniform(0.04, 0.10, 4)  # covers the rotation's corners, and shifts
    image = image.crop((int(left * w), int(top * h), int(w - right * w), int(h - bottom * h)))
    linear = (np.asarray(image, dtype=np.float32) / 255) ** 2.2 * 2 ** rng.uniform(-0.3, 0.3)
    image = Image.fromarray((np.clip(linear, 0, 1) ** (1 / 2.2) * 255).round().astype(np.uint8))
    scale = rng.uniform(0.7, 1.0)
    image = image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(70, 96)))
    return buffer.getvalue()


def best_threshold(vectors: np.ndarray, sources: np.ndarray) -> tuple[float, float, float]:
    """The strictest similarity at which the groups still join ``GROUP_RECALL`` of the pairs of
    copies of one photo (strict: a gallery holds far more pairs of different photos than this
    sample), unless the groups there join different photos too: then the loosest one whose groups
    are ``GROUP_PRECISION`` right (or, when none is, the strictest of all). Returns it with the
    groups' pairwise precision and recall there."""
    scores = []
    for threshold in GRID:  # grouped exactly as predict groups a gallery
        tp, found, together = pair_counts(burst_groups(vectors, float(threshold))[0], sources)
        scores.append((tp / max(found, 1), tp / max(together, 1)))
    meeting = [i for i, (_, recall) in enumerate(scores) if recall >= GROUP_RECALL]
    best = meeting[-1] if meeting else 0
    if scores[best][0] < GROUP_PRECISION:  # joining different photos costs more than missing copies: a burst cull would drop them
        precise = [i for i, (precision, _) in enumerate(scores) if precision >= GROUP_PRECISION]
        best = precise[0] if precise else len(GRID) - 1
    return float(GRID[best]), *scores[best]


def calibrate_group_similarity(module: BeholderModule, root: str, images: list[str], store, seed: int = 0) -> tuple[float, float, float] | None:
    """The model's near-copy threshold from ``SOURCES`` of ``images`` (under ``root``) and their
    near-copies, with the groups' pairwise precision and recall there on that sample; None when
    fewer than 4 of them can be read."""
    rng = np.random.default_rng(seed)
    picked = [images[i] for i in rng.permutation(len(images))[: SOURCES * 2]]
    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="beholder-near-copies-") as folder:
        names, sources = [], []
        for source, image in enumerate(picked):
            try:
                original = decode_image(store.read(join(root, image)))
            except (UnreadableImage, OSError):
                continue
            original.thumbnail((1024, 1024))
            for copy in range(COPIES + 1):
                name = f"{source}-{copy}.jpg"
                with open(os.path.join(folder, name), "wb") as f:
                    if copy == 0:
                        original.save(f, "JPEG", quality=95)
                    else:
                        f.write(near_copy(original, rng))
                names.append(name)
                sources.append(source)
            if len(set(sources)) == SOURCES:
                break
        if len(set(sources)) < 4:
            return None
        vectors = [out["embeddings"].float().cpu().numpy() for out in predictions(module, folder, names, Store(), 16, 0)]
        return best_threshold(np.concatenate(vectors), np.array(sources))
