"""DataLoader settings per device (issue #23 item 5): ``auto`` resolves to 0 workers on CPU and to workers,
pinned memory and persistent workers on a GPU; explicit values win; bad values are refused."""

from __future__ import annotations

import os

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mmllm.engine.loader_settings import MAX_AUTO_WORKERS, auto_num_workers, loader_settings
from mmllm.engine.run_config import RunConfig
from mmllm.schema import ConfigError

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)  # a device object needs no CUDA to exist


def run(**keys) -> RunConfig:
    return RunConfig.parse({"task": "x", "output_dir": "unused", **keys}, "run")


def cores() -> int:
    return len(os.sched_getaffinity(0))


def test_auto_on_cpu_is_no_worker_and_no_pinning():
    assert run().num_workers == "auto"
    assert loader_settings(run(), CPU) == {"num_workers": 0, "pin_memory": False}


def test_auto_on_gpu_uses_the_free_cores_pins_and_keeps_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert loader_settings(run(), GPU) == {"num_workers": 8, "pin_memory": True, "persistent_workers": True}
    # 16 cores shared by 4 local ranks: 4 each, one left for the step -> 3 workers
    assert auto_num_workers(GPU, local_world_size=4) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert auto_num_workers(GPU) == 0  # one core: the step needs it
    assert MAX_AUTO_WORKERS == 8


def test_explicit_values_win():
    settings = loader_settings(run(num_workers=2, pin_memory=True, persistent_workers=False), CPU)
    assert settings == {"num_workers": 2, "pin_memory": True, "persistent_workers": False}
    assert loader_settings(run(num_workers=0, pin_memory=False), GPU) == {"num_workers": 0, "pin_memory": False}


@pytest.mark.parametrize("bad", [-1, "many", 1.5])
def test_bad_worker_counts_are_refused(bad):
    with pytest.raises(ConfigError, match="num_workers"):
        run(num_workers=bad)


def test_the_settings_build_a_working_loader_with_workers():
    """The resolved keywords are accepted by the trainer's loader class and deliver every sample once."""
    data = list(range(12))
    loader = StatefulDataLoader(data, batch_size=4, **loader_settings(run(num_workers=1), CPU))
    assert loader.persistent_workers and loader.num_workers == 1
    seen = [int(x) for epoch in range(2) for batch in loader for x in batch]
    assert sorted(seen) == sorted(data * 2)


def test_loader_keys_do_not_make_a_stored_run_different():
    assert {"num_workers", "pin_memory", "persistent_workers"} <= RunConfig.HARMLESS
