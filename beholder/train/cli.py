"""beholder train: conf/train.yaml and Hydra's overrides in, train(cfg) run (beholder/core/entry.py)."""

from beholder.core.entry import hydra_application

main = hydra_application("train", "beholder.train.run:train")
