"""beholder predict: conf/predict.yaml and Hydra's overrides in, predict(cfg) run (beholder/core/entry.py)."""

from beholder.core.entry import hydra_application
from beholder.predict.run import predict

main = hydra_application("predict", predict)
