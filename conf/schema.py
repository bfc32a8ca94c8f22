"""The types of train's and predict's options: dataclasses registered in Hydra's ConfigStore, which
the YAML files of this folder fill in (their values and comments are the defaults and the help).

Hydra checks each option's type and name as it composes (``cv=abc``, ``data.batch_sise=8``);
:func:`problems` then checks what a type cannot say (ranges, options that exclude each other), so
that ``beholder train`` and ``beholder predict`` refuse a misread option in one line before torch loads.

``head`` and ``optimizer`` stay untyped here: each choice of those groups builds a different class,
whose own signature checks its options (beholder/core/spec.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

# OmegaConf reads these annotations at runtime: Optional[...] and typing's names, not ``X | None``.
# ruff: noqa: UP007, UP045

# cull=: the share of the photos a person rated best (4-5 stars) each level keeps
CULL_LEVELS = {"gentle": 0.95, "normal": 0.85, "hard": 0.70}
CULL_CHOICES = ("auto", "promise", *CULL_LEVELS)
THRESHOLD_OPTIONS = ("keep_recall", "threshold", "keep_top")
XMP_NAMING = ("auto", "adobe", "darktable")  # new sidecars: as the folder's others, IMG_1.xmp, IMG_1.jpg.xmp
OPTIMIZED_MODES = ("auto", "min", "max")
PRECISIONS = ("auto", "fp32", "bf16")  # predict's precision=


@dataclass
class BackboneSpec:
    """The backbone options of ``conf/backbone/*.yaml`` (documented in xception.yaml); a checkpoint
    keeps them, so that it alone rebuilds its network."""

    name: str = MISSING
    pretrained: bool = True
    weights: Optional[str] = None
    trainable_blocks: int = 4
    train_norm: bool = True
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    extra: Optional[list[str]] = None  # more frozen extractors, "NAME" or "NAME@WEIGHTS", features concatenated
    levels: bool = False  # also pool every feature level of each network (MLSP), not just its last
    scales: Optional[list[float]] = None  # see each photo at these multiples of the input size; features averaged


@dataclass
class AugmentConfig:
    min_crop: float = MISSING
    jitter: float = MISSING


@dataclass
class DataConfig:
    """``conf/data/default.yaml``: a labelled gallery (beholder.data.gallery.GalleryDataModule)."""

    _target_: str = MISSING
    root: str = MISSING
    labels: str = MISSING
    score_column: Optional[str] = MISSING
    seed: int = MISSING
    group_by: Optional[str] = MISSING
    group_pattern: Optional[str] = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    image_size: Optional[list[int]] = MISSING
    oversample: Optional[bool] = MISSING
    oversample_strength: float = MISSING
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    on_missing: str = MISSING
    endpoint_url: Optional[str] = MISSING
    cache_dir: Optional[str] = MISSING
    max_pixels: int = MISSING


@dataclass
class TechnicalConfig:
    """``conf/technical/*.yaml``: the technical checks predict runs."""

    enabled: bool = MISSING
    checks: list[str] = MISSING
    reject: Optional[float] = MISSING
    review: Optional[float] = MISSING


@dataclass
class CommandConfig:
    """The options train and predict share, under the same names."""

    trainer: dict[str, Any] = MISSING
    gallery: str = MISSING
    batch_size: int = MISSING
    endpoint_url: Optional[str] = MISSING
    feature_cache: Optional[str] = MISSING
    ckpt_path: Optional[str] = MISSING  # the old spelling of train's resume and predict's ckpt


@dataclass
class TrainConfig(CommandConfig):
    """``conf/train.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    head: Any = MISSING
    optimizer: Any = MISSING
    callbacks: dict[str, Any] = MISSING
    logger: dict[str, Any] = MISSING
    labels: str = MISSING
    seed: int = MISSING
    num_workers: int = MISSING
    probe_init: bool = MISSING
    feature_views: int = MISSING
    cv: int = MISSING
    personal: bool = MISSING
    base_ckpt: Optional[str] = MISSING
    save: Optional[str] = MISSING
    resume: Optional[str] = MISSING
    runs_root: str = MISSING
    output_dir: str = MISSING
    optimized_metric: str = MISSING
    optimized_mode: str = MISSING


@dataclass
class PredictConfig(CommandConfig):
    """``conf/predict.yaml``."""

    technical: TechnicalConfig = field(default_factory=TechnicalConfig)
    ckpt: Optional[str] = MISSING
    output: str = MISSING
    cull: str = MISSING
    keep_recall: Optional[float] = MISSING
    promise_recall: float = MISSING
    promise_confidence: float = MISSING
    threshold: Optional[float] = MISSING
    keep_top: Optional[float] = MISSING
    num_workers: Any = MISSING  # "auto" or a count
    precision: str = MISSING
    channels_last: Any = MISSING  # true, false or "auto"
    compile: bool = MISSING
    fold_norms: bool = MISSING
    highlights: int = MISSING
    embeddings: bool = MISSING
    group_similarity: Optional[float] = MISSING
    group_window: Optional[float] = MISSING
    keep_per_group: Optional[int] = MISSING
    labels: Optional[str] = MISSING
    ratings: Optional[str] = MISSING
    xmp: bool = MISSING
    xmp_beside_images: bool = MISSING
    xmp_stars: bool = MISSING
    xmp_overwrite_ratings: bool = MISSING
    xmp_naming: str = MISSING


SCHEMAS = {"train": TrainConfig, "predict": PredictConfig}


def register() -> None:
    """The schemas, under the names the YAML files' defaults lists give them (``train_schema``, ...)."""
    store = ConfigStore.instance()
    for name, schema in SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)


def shown(value) -> str:
    """A value as the user typed it: ``keep_top=2``, not the float ``2.0`` the schema made of it."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


def choice(name: str, value, choices: tuple[str, ...]) -> str | None:
    return None if value in choices else f"{name}={value!r}: give one of {', '.join(choices)}"


def share(name: str, value, closed: bool = True) -> str | None:
    if value is None or (0 < value <= 1 if closed else 0 < value < 1):
        return None
    return f"{name}={shown(value)}: give a share in (0, 1{']' if closed else ')'}"


def train_problems(cfg: DictConfig) -> list[str]:
    return [
        *([f"cv={cfg.cv}: give K >= 2 folds, or 0 for one train/val split"] if cfg.cv < 0 or cfg.cv == 1 else []),
        *([f"cv={cfg.cv} trains heads on cached features and does not resume: set feature_cache=FOLDER and resume=null"]
          if cfg.cv and (cfg.resume or not cfg.feature_cache) else []),
        *([f"optimized_metric={cfg.optimized_metric}: cv={cfg.cv} optimises a val/ metric (out of fold)"]
          if cfg.cv and not cfg.optimized_metric.startswith("val/") else []),
        choice("optimized_mode", cfg.optimized_mode, OPTIMIZED_MODES),
        *([f"feature_views={cfg.feature_views}: give 1 or more"] if cfg.feature_views < 1 else []),
    ]


def predict_problems(cfg: DictConfig) -> list[str]:
    given = [name for name in THRESHOLD_OPTIONS if cfg[name] is not None]
    per_group, window, similarity = cfg.keep_per_group, cfg.group_window, cfg.group_similarity
    return [
        *([f"give at most one of {', '.join(THRESHOLD_OPTIONS)} (got {', '.join(given)})"] if len(given) > 1 else []),
        share("keep_recall", cfg.keep_recall), share("keep_top", cfg.keep_top),
        share("promise_recall", cfg.promise_recall, closed=False), share("promise_confidence", cfg.promise_confidence, closed=False),
        choice("cull", cfg.cull, CULL_CHOICES),
        *([f"cull={cfg.cull} is a cut of its own; leave out {given[0]} (or give cull=auto)"] if cfg.cull in CULL_LEVELS and given else []),
        *([f"keep_per_group={shown(per_group)}: give a whole number of images, 1 or more"] if per_group is not None and per_group < 1 else []),
        *([f"group_window={shown(window)}: give seconds, more than 0"] if window is not None and window <= 0 else []),
        *([f"group_similarity={shown(similarity)}: give a cosine similarity in [-1, 1]"] if similarity is not None and not -1 <= similarity <= 1 else []),
        choice("xmp_naming", cfg.xmp_naming, XMP_NAMING),
        choice("precision", cfg.precision, PRECISIONS),
        *([f"channels_last={shown(cfg.channels_last)}: give true, false or auto"] if cfg.channels_last not in (True, False, "auto") else []),
        *(["keep_per_group and group_window group images by their embeddings; leave embeddings=true"]
          if not cfg.embeddings and (per_group is not None or window is not None) else []),
    ]


def unknown_keys(config_name: str, cfg: DictConfig) -> list[str]:
    """A key added (``+data.secret=...``) where the schema has none: Hydra's compose lets it into a
    typed node; the schema does not. The value is not repeated (it may be a credential)."""
    try:
        OmegaConf.merge(OmegaConf.structured(SCHEMAS[config_name]), OmegaConf.to_container(cfg, resolve=False))
    except ConfigKeyError as error:
        return [f"{error.full_key}: no such option (beholder {config_name} --help lists them)"]
    return []


def problems(config_name: str, cfg: DictConfig) -> list[str]:
    """What is wrong with a composed config that its types cannot say, one line each (none: [])."""
    found = [*unknown_keys(config_name, cfg), *{"train": train_problems, "predict": predict_problems}[config_name](cfg)]
    return [problem for problem in found if problem]
