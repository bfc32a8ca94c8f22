"""How this process was started (torchrun, SLURM, or plainly) and what follows for the Trainer and
the loaders. A launch that disagrees with ``trainer.num_nodes`` / ``trainer.devices`` is refused in
one line on every node, before any process waits for peers that will never come."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import torch
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig
from torch.distributed import PrefixStore, TCPStore

from beholder.core.errors import UserError

# Lightning's precision names (its Trainer docs) and their short forms
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true",
              "64", "32", "16", "bf16", 64, 32, 16)
MOST_LOADER_WORKERS = 8
PEER_TIMEOUT = timedelta(minutes=10)  # for every process of a torchrun launch to reach its checks


def launch_shape() -> tuple[str, int, int] | None:
    """(launcher, nodes, processes per node) when torchrun or SLURM's srun started this process."""
    if TorchElasticEnvironment.detect():
        world, per_node = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
        return "torchrun", world // per_node, per_node
    if SLURMEnvironment.detect():
        nodes = int(os.environ.get("SLURM_NNODES", "1"))
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]  # e.g. "2(x3)"
        return "SLURM", nodes, int(per_node) if per_node else int(os.environ["SLURM_NTASKS"]) // nodes
    return None


def uses_gpu(trainer: DictConfig) -> bool:
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def check_launch(trainer: DictConfig) -> None:
    """``trainer.precision`` is one Lightning knows; under torchrun or SLURM, ``trainer.num_nodes``
    and ``trainer.devices`` match the processes actually started. Under torchrun every process
    learns every other's verdict, so a node started with other options stops them all."""
    problem = launch_problem(trainer)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        problem = agree_with_peers(problem)
    if problem:
        raise UserError(problem)


def launch_problem(trainer: DictConfig) -> str | None:
    precision = trainer.get("precision", "32-true")
    if precision not in PRECISIONS:
        return f"trainer.precision={precision!r}: give 32-true, bf16-mixed (GPUs since Ampere, and CPUs), 16-mixed, bf16-true or 16-true"
    shape, num_nodes = launch_shape(), trainer.get("num_nodes", 1)
    if shape is None:
        if num_nodes != 1 and "NODE_RANK" not in os.environ:  # Lightning's own way: NODE_RANK, MASTER_ADDR on each machine
            return (f"trainer.num_nodes={num_nodes}: start the command on each machine with torchrun or srun (README \"Scale out\"); "
                    "started plainly it would wait for machines that nobody starts")
        return None
    launcher, nodes, per_node = shape
    if num_nodes != nodes:
        return (f"trainer.num_nodes={num_nodes}, but {launcher} started {nodes} node{'s' if nodes != 1 else ''} "
                f"({per_node} process{'es' if per_node != 1 else ''} each): give trainer.num_nodes={nodes} on every node")
    devices = trainer.get("devices", "auto")
    if devices in ("auto", -1, "-1"):
        devices = torch.cuda.device_count() if uses_gpu(trainer) else 1
    if isinstance(devices, int) and devices != per_node:
        return (f"trainer.devices={trainer.get('devices')} makes {devices} process{'es' if devices != 1 else ''} a node, but {launcher} "
                f"started {per_node}: give trainer.devices={per_node} (or start {devices} per node)")
    return None


def agree_with_peers(problem: str | None) -> str | None:
    """Post this process's verdict in the store torchrun's agent already serves and read every
    process's: the first problem found, named by its process, or None when all are fine."""
    rank, world = os.environ["RANK"], int(os.environ["WORLD_SIZE"])
    client = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=PEER_TIMEOUT)
    store = PrefixStore(f"beholder/launch/{os.environ['TORCHELASTIC_RUN_ID']}/{os.environ['TORCHELASTIC_RESTART_COUNT']}/", client)
    store.set(rank, problem or "")
    if problem:
        return problem
    ranks = [str(r) for r in range(world)]
    store.wait(ranks)
    return next((f"process {r} stopped: {verdict}" for r in ranks if (verdict := store.get(r).decode())), None)


def loader_workers(value: int | str, trainer: DictConfig) -> int:
    """``num_workers``: a number, or ``auto``: this process's share of the node's CPU cores (at most
    8), so that a GPU does not wait for JPEG decoding."""
    if value == "auto":
        shape, devices = launch_shape(), trainer.get("devices")
        per_node = shape[2] if shape else devices if isinstance(devices, int) and devices > 0 else 1
        return max(1, min(MOST_LOADER_WORKERS, len(os.sched_getaffinity(0)) // per_node))
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(f"num_workers={value!r}: give a whole number of loader processes, 0 or more, or auto")
    return value


def pin_memory(trainer) -> bool:
    """Page-locked batches copy to a GPU asynchronously; on a CPU they only cost memory."""
    return trainer is not None and trainer.strategy.root_device.type == "cuda"


def check_shared_folder(trainer, folder: str, option: str) -> None:
    """Every process of a multi-process run must see ``folder`` (as it names it) as the folder the
    first process writes to: a relative path, or one on each machine's own disk, is not. Decided
    together, so every process stops with the same one line instead of one of them waiting forever."""
    if trainer.world_size == 1:
        return
    strategy = trainer.strategy
    marker = os.path.join(folder, ".beholder-shared-" + strategy.broadcast(uuid.uuid4().hex if strategy.is_global_zero else None))
    if strategy.is_global_zero:
        os.makedirs(folder, exist_ok=True)
        open(marker, "w").close()
    strategy.barrier()
    shared = strategy.reduce_boolean_decision(os.path.exists(marker), all=True)
    strategy.barrier()
    if strategy.is_global_zero:
        os.remove(marker)
    if not shared:
        raise UserError(f"{option}={folder}: not every process sees what the first one writes there (a relative path, or a "
                        f"folder on each machine's own disk); on {trainer.num_nodes} nodes give an absolute folder on a shared "
                        f"filesystem{' or an s3:// prefix' if option == 'output' else ''}")
