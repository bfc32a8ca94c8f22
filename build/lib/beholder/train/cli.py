"""beholder train: Hydra's main around train(cfg), reading conf/train.yaml (installed as the package beholder.conf).

The process-wide settings belong here, not in train(): library chatter quietened, and glibc asked
to keep freed memory for the next batch (beholder/core/memory.py)."""

import hydra
from omegaconf import DictConfig

from beholder.core.console import quiet_libraries
from beholder.core.errors import exit_on_user_error
from beholder.core.memory import keep_freed_memory
from beholder.train.run import train


@hydra.main(version_base="1.3", config_path="pkg://beholder.conf", config_name="train")
def main(cfg: DictConfig):
    quiet_libraries()
    keep_freed_memory()
    with exit_on_user_error():
        return train(cfg)
