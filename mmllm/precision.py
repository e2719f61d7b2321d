"""Which floating-point precision to run in, chosen by measurement rather than by habit.

``resolve_dtype(name)`` turns a block's ``dtype`` option into a torch dtype and
``resolve_precision(name)`` a run's ``precision`` into ``"bf16"`` or ``"fp32"``. ``"auto"``
means: bf16 on a CUDA GPU that supports it (fp32 on one that does not: fp16 would need
loss scaling and overflows on LLM activation outliers); on a CPU, whichever of bf16 and
fp32 a one-off micro-benchmark (forward+backward of one LLM decoder layer on visual
tokens, about a second) finds faster. CPUs without native bf16 matrix units emulate it,
and then fp32 wins (measured on a 2-core Xeon: bf16 237 ms vs fp32 140 ms for the
SmolLM2 block). The result is cached per machine in ``$MMLLM_CACHE/precision.json``, keyed
by the CPU model name and the torch version, written atomically.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError
from .schema import suggest

CACHE_FILE = "precision.json"
DTYPE_ALIASES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
DTYPE_NAMES = ("auto", *DTYPE_ALIASES)
PRECISIONS = {"auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "fp32": "fp32", "float32": "fp32"}
_CANONICAL = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
_MEMO: dict[str, dict[str, Any]] = {}  # machine key -> cache entry measured by this process


def check_dtype_name(name: str | torch.dtype) -> str | torch.dtype:
    """``name`` if it is a dtype option this library accepts, else a ConfigError listing them."""
    if isinstance(name, torch.dtype):
        if name not in _CANONICAL:
            raise ConfigError(f"dtype {name} is not supported; use one of {list(_CANONICAL)}")
        return name
    if not isinstance(name, str) or name.strip().lower() not in DTYPE_NAMES:
        hint = suggest(str(name).lower(), list(DTYPE_NAMES), cutoff=0.5) if isinstance(name, str) else ""
        raise ConfigError(f"dtype {name!r} is not one of {list(DTYPE_NAMES)}{hint}")
    return name


def resolve_dtype(name: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """torch dtype for ``name``; ``"auto"`` is decided for ``device`` (default: CUDA when available)."""
    check_dtype_name(name)
    if isinstance(name, torch.dtype):
        return name
    text = name.strip().lower()
    if text != "auto":
        return DTYPE_ALIASES[text]
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_bf16(device) else torch.float32
    if device.type == "cpu":
        return cpu_dtype_choice()
    return torch.float32  # other accelerators: no measurement yet, the safe choice


def resolve_precision(name: str) -> str:
    """A run's precision, ``"bf16"`` or ``"fp32"``; ``"auto"`` follows :func:`resolve_dtype`."""
    if not isinstance(name, str) or name.strip().lower() not in PRECISIONS:
        hint = suggest(str(name).lower(), list(PRECISIONS), cutoff=0.5) if isinstance(name, str) else ""
        raise ConfigError(f"run.precision {name!r} is not one of {list(PRECISIONS)}{hint}")
    value = PRECISIONS[name.strip().lower()]
    if value != "auto":
        return value
    return "bf16" if resolve_dtype("auto") == torch.bfloat16 else "fp32"


def cuda_has_bf16(device: torch.device) -> bool:
    """Native bf16 on this GPU (Ampere or newer), not emulated."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


# -- the CPU measurement -------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (elsewhere: what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key() -> str:
    return f"{cpu_name()} | torch {torch.__version__}"


def cache_path() -> Path:
    from .assets import cache_root

    return cache_root() / CACHE_FILE


def benchmark_cpu_dtypes(repeats: int = 3, budget_s: float = 2.0) -> dict[str, float]:
    """Median ms of forward+backward of one frozen LLaMA-shaped decoder layer (SmolLM2's
    widths, 4x197 visual tokens, SDPA, no positions, gradients to the input) per dtype."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from .architectures import identity_rotation

    config = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=1
    )
    config._attn_implementation = "sdpa"
    generator = torch.Generator().manual_seed(0)
    results: dict[str, float] = {}
    start = time.perf_counter()
    for dtype in (torch.float32, torch.bfloat16):
        layer = LlamaDecoderLayer(config, layer_idx=0).to(dtype).requires_grad_(False)
        layer.self_attn.is_causal = False
        x = torch.randn(4, 197, 576, generator=generator).to(dtype).requires_grad_(True)
        rotation = identity_rotation(4, 197, 64, dtype, x.device)
        times = []
        for i in range(repeats + 1):  # the first one warms up
            t0 = time.perf_counter()
            out = layer(x, attention_mask=None, position_embeddings=rotation)
            out = out[0] if isinstance(out, tuple) else out
            out.float().square().mean().backward()
            x.grad = None
            if i:
                times.append(time.perf_counter() - t0)
            if i and time.perf_counter() - start > budget_s / 2 * (1 + (dtype == torch.bfloat16)):
                break
        results[_CANONICAL[dtype]] = 1000 * statistics.median(times)
    return results


def _read_cache(path: Path) -> dict[str, Any]:
    """The cache file's entries; a missing, unreadable or malformed file counts as empty (it is rebuilt)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _valid_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("choice") in ("bfloat16", "float32")


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cpu_dtype_choice(refresh: bool = False) -> torch.dtype:
    """bf16 or fp32, whichever the cached (or, the first time on a machine, fresh) measurement found faster."""
    key = machine_key()
    entry = _read_cache(cache_path()).get(key)
    if entry is not None and _valid_entry(entry) and not refresh:
        return DTYPE_ALIASES[entry["choice"]]
    if key in _MEMO and not refresh:  # measured by this process already (e.g. under another $MMLLM_CACHE)
        return _store(_MEMO[key])
    return store_cpu_choice(benchmark_cpu_dtypes())


def store_cpu_choice(timings: dict[str, float]) -> torch.dtype:
    """Cache the choice that ``timings`` (ms per dtype name) imply for this machine, and return it."""
    choice = "bfloat16" if timings["bfloat16"] < timings["float32"] else "float32"
    measured = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return _store(
        {
            "choice": choice,
            "ms": {k: round(v, 2) for k, v in timings.items()},
            "threads": torch.get_num_threads(),
            "measured": measured,
        }
    )


def _store(entry: dict[str, Any]) -> torch.dtype:
    path, key = cache_path(), machine_key()
    _MEMO[key] = entry
    data = _read_cache(path)
    data[key] = entry
    try:
        _write_atomic(path, data)
    except OSError:
        pass  # a read-only cache only costs a re-measurement next time
    return DTYPE_ALIASES[entry["choice"]]


def forget_measurements() -> None:
    """Drop what this process measured (the cache file stays): for tests of the cache itself."""
    _MEMO.clear()


def cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Parameters to ``dtype``, buffers as they are: exactly what DeepSpeed's bf16 does to a training model
    (it keeps fp32 buffers such as rotary ``inv_freq``), so a reloaded model evaluates in the dtypes it trained
    in. ``model.to(dtype)`` would also round ``inv_freq`` to bf16 and shift every rotary position."""
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return model
