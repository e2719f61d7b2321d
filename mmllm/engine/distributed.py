"""Process-group set-up so that the same script runs under the DeepSpeed launcher,
torchrun, or plain ``python`` (one process), on GPU or on CPU (gloo)."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any

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
        atexit.unregister(destroy_process_group_at_exit)  # once, however often a group is re-created
        atexit.register(destroy_process_group_at_exit)
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


_ENGINES: weakref.WeakSet = weakref.WeakSet()  # DeepSpeed engines to release before the groups at exit


def release_at_exit(engine: Any) -> None:
    """Have the exit handler release ``engine`` (``DeepSpeedEngine.destroy``: its hooks and buffers) before it
    destroys the groups, so that nothing but reference cycles keeps the engine, and the groups it holds, alive.

    Done at exit, not at the end of training: the engine stays usable until then (a test or notebook may
    still evaluate it). A ZeRO-3 engine outlives even this: DeepSpeed 0.19.8 keeps it reachable from two
    module-level objects, ``deepspeed.runtime.zero.parameter_offload.FWD_MODULE_STACK`` (the top module,
    appended at initialisation and never removed) and the ``functools.lru_cache`` of
    ``PartitionedParameterCoordinator.__params_to_release`` (keyed on the coordinator); clearing both frees
    it (measured), but they are DeepSpeed's internals, left alone here."""
    _ENGINES.add(engine)


def destroy_process_group_at_exit() -> None:
    """Tear the process group down while the interpreter is still whole (an exit handler, registered when
    :func:`init_distributed` creates the group).

    Left to the interpreter's teardown, a run that had finished could still die: a gloo worker thread
    destroying the work of the last collective (the tensors of ``all_gather_object``, whose Python objects
    had gone) asks for the GIL, the finalizing interpreter ends that thread with ``pthread_exit``, and its
    unwinding through a ``noexcept`` destructor calls ``std::terminate`` ("terminate called without an
    active exception", SIGABRT; core dump: ``AsyncAllgatherWork::~AsyncAllgatherWork`` ->
    ``TensorImpl::decref_pyobject`` -> ``take_gil`` -> ``PyThread_exit_thread``). Two ranks doing twenty
    ``all_gather_object`` and exiting aborted in 20 of 60 launches on the loaded 2-core machine, 0 of 40
    with the group destroyed first; pytorch/pytorch PR 179291 describes the same teardown. Destroying the
    group joins those threads while they can still take the GIL - once nothing else holds it: in a
    DeepSpeed run, ``deepspeed.utils.groups`` and the engine did, and one group's threads outlived
    ``torch.distributed.destroy_process_group`` into the teardown. No barrier: this is local, and a peer
    may already be gone (an error) - waiting for it would hang the exit."""
    for engine in list(_ENGINES):
        try:
            engine.destroy()
        except Exception as err:  # noqa: BLE001 - at exit: say it, the run's outcome is already decided
            log.warning("releasing a DeepSpeed engine at exit failed: %s", err)
    _ENGINES.clear()
    if not torch.distributed.is_initialized():  # destroyed by the caller, or never created here
        return
    import deepspeed.comm

    try:
        if deepspeed.comm.is_initialized():
            # DeepSpeed's destroy also drops its module-level references to the groups (deepspeed.utils.groups)
            deepspeed.comm.destroy_process_group()
        else:
            torch.distributed.destroy_process_group()
    except Exception as err:  # noqa: BLE001 - at exit: say it, the run's outcome is already decided
        log.warning("destroying the process group at exit failed: %s", err)
    # A DeepSpeed engine left in a reference cycle still holds its groups (data_parallel_group, ...), and
    # a group lives, with its gloo threads, as long as anything holds it (gloo's shutdown and abort leave
    # the threads running): collect such cycles now, so the groups' threads are joined while the
    # interpreter is whole (torch drops the GIL for that join).
    gc.collect()
    if _gloo_threads_left():
        # Something still holds a group: a ZeRO-3 engine (see release_at_exit), and, measured with DeepSpeed
        # 0.19.8 on one process, one group even after a stage-0 engine is freed (two after training steps),
        # held where no Python object refers to it. Its threads live into the teardown; give one that is still
        # freeing its last work the GIL and the CPU first.
        time.sleep(GRACE_S)


GRACE_S = 0.2


def _gloo_threads_left() -> bool:
    """Whether gloo's worker threads still run (their names, from /proc; True where /proc cannot say)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return True
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):
            if "gloo" in (task / "comm").read_text():
                return True
    return False


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
