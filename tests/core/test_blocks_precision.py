"""dtype/precision names, and the per-machine cache of the CPU bf16-vs-fp32 measurement."""

import json

import pytest
import torch

from mmllm import precision
from mmllm.errors import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private $MMLLM_CACHE, no CUDA, a counting fake benchmark, and nothing memoised before or after."""
    monkeypatch.setenv("MMLLM_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls = []

    def fake_benchmark():  # the timings measured earlier on this kind of machine
        calls.append(1)
        return {"bfloat16": 237.0, "float32": 140.0}

    monkeypatch.setattr(precision, "benchmark_cpu_dtypes", fake_benchmark)
    precision.forget_measurements()
    yield tmp_path / "precision.json", calls
    precision.forget_measurements()


@pytest.mark.parametrize(
    "name,dtype",
    [
        ("bfloat16", torch.bfloat16),
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("float32", torch.float32),
        ("FP32", torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_named_dtypes(name, dtype):
    assert precision.resolve_dtype(name) == dtype


@pytest.mark.parametrize(
    "name,message",
    [
        ("float8", "not one of"),
        ("bfloat61", "did you mean 'bfloat16'"),
        (torch.int8, "not supported"),
        (16, "not one of"),
    ],
)
def test_unknown_dtype_is_a_config_error(name, message):
    with pytest.raises(ConfigError, match=message):
        precision.resolve_dtype(name)


def test_run_precision_names():
    assert precision.resolve_precision("bf16") == "bf16" and precision.resolve_precision("float32") == "fp32"
    with pytest.raises(ConfigError, match="run.precision 'fp16' is not one of"):
        precision.resolve_precision("fp16")


def test_auto_on_a_gpu_is_bf16_where_supported(monkeypatch):
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda device: True)
    assert precision.resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda device: False)
    assert precision.resolve_dtype("auto", "cuda:0") == torch.float32


def test_cpu_choice_is_measured_once_then_read_from_the_cache(cache):
    path, calls = cache
    assert precision.resolve_dtype("auto") == torch.float32  # fp32 was faster
    assert len(calls) == 1
    entry = json.loads(path.read_text())[precision.machine_key()]
    assert entry["choice"] == "float32" and entry["ms"] == {"bfloat16": 237.0, "float32": 140.0}
    assert precision.cpu_name() in precision.machine_key() and torch.__version__ in precision.machine_key()
    precision.forget_measurements()  # a new process: only the file remains
    assert precision.resolve_dtype("auto", "cpu") == torch.float32
    assert precision.resolve_precision("auto") == "fp32"
    assert len(calls) == 1  # the cache was used


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": {"choice": "float8"}}', ""])
def test_corrupt_cache_is_rebuilt(cache, content):
    path, calls = cache
    path.write_text(content.replace("KEY", precision.machine_key()))
    assert precision.resolve_dtype("auto") == torch.float32
    assert len(calls) == 1
    assert json.loads(path.read_text())[precision.machine_key()]["choice"] == "float32"


def test_choice_follows_the_measurement(cache, monkeypatch):
    path, _ = cache
    monkeypatch.setattr(precision, "benchmark_cpu_dtypes", lambda: {"bfloat16": 90.0, "float32": 140.0})
    assert precision.resolve_dtype("auto") == torch.bfloat16
    assert precision.resolve_precision("auto") == "bf16"
    assert not list(path.parent.glob(".precision.json.*"))  # written atomically: no temporary file left


@pytest.mark.slow  # a few seconds alone, much more on a busy shared machine
def test_real_micro_benchmark_is_quick():
    import time

    start = time.perf_counter()
    timings = precision.benchmark_cpu_dtypes(repeats=1, budget_s=1.0)
    assert set(timings) == {"bfloat16", "float32"} and all(v > 0 for v in timings.values())
    assert time.perf_counter() - start < 30  # generous: the test machine's cores are shared
