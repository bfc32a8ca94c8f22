"""Score a gallery: python predict.py ckpt_path=best.ckpt gallery=PATH_OR_S3 output=PATH_OR_S3; see README."""

import hydra
from omegaconf import DictConfig

from beholder.core.errors import exit_on_user_error
from beholder.predict.run import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        predict(cfg)


if __name__ == "__main__":
    main()
