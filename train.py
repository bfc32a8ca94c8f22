"""Train beholder: python train.py [head=regression] [data.root=... data.labels=...]; see README."""

import hydra
from omegaconf import DictConfig

from beholder.core.errors import exit_on_user_error
from beholder.train.run import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    with exit_on_user_error():
        return train(cfg)


if __name__ == "__main__":
    main()
