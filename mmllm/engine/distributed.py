"""Process-group set-up so that the same script runs under the DeepSpeed launcher,
torchrun, or plain ``python`` (one process), on GPU or on CPU (gloo)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys

import torch

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """(rank, world_size) after initialising torch.distributed through DeepSpeed."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # plain `python script.py`: a world of one, without MPI discovery
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # DeepSpeed prints its op-build banner on stdout, where commands print their JSON results
        with contextlib.redirect_stdout(sys.stderr):
            deepspeed.init_distributed(dist_backend=backend)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    cores = os.cpu_count() or 1
    if rank == 0 and world > 1 and not torch.cuda.is_available() and world >= cores:
        log.warning(
            "%d CPU processes on %d cores: each process gets at most one core and gloo adds "
            "communication, so this is slower than one process (measured on 2 cores: 13.3 vs 1.45 s/step); "
            "use one process on CPU unless you are testing the distributed path",
            world,
            cores,
        )
    return rank, world


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def local_world_size() -> int:
    """Processes on this machine (the launchers' ``LOCAL_WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_gather_objects(obj):
    """Every rank's ``obj`` as a list (evaluation results are gathered this way)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
