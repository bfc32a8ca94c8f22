"""beholder predict: conf/predict.yaml and Hydra's overrides in, predict(cfg) run (beholder/core/entry.py)."""

from beholder.core.entry import hydra_application

main = hydra_application("predict", "beholder.predict.run:predict")
