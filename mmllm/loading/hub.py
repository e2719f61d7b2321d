"""Hub ids downloaded by the bytes they need: ``config.json``, the safetensors index and only the
shard(s) holding the chosen layers, into the standard Hugging Face cache.

As transformers does, a hub id (``meta-llama/Llama-2-7b-hf``) is downloaded unless
``HF_HUB_OFFLINE=1``; offline, the local cache is used as before (:mod:`.hub_cache`) and an id
that is not cached is a clear error. Files come through ``huggingface_hub.hf_hub_download``
(resumable, size- and ETag-checked, shared with every other Hugging Face tool), so a later
``from_pretrained`` of another layer adds just the shard it needs to the same snapshot folder.
A single-file checkpoint (``model.safetensors``, no index) is downloaded whole, unless range requests
are asked for (the block option ``hub_range_requests: true``, ``MMLLM_HUB_RANGE_REQUESTS=1``, or ``ensure_layers(..., range_requests=True)``): then its
safetensors header (8-byte length + JSON) is read, then only the chosen tensors' bytes by HTTP range
requests, and a small safetensors file of just those tensors (bytes as stored) is written atomically
to ``<hub cache>/../mmllm-ranges/<repo>/<commit>/<digest of the keys>/`` next to a copy of
``config.json``; the layers are read from that folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..architectures import ArchitectureSpec
from ..errors import CheckpointError
from . import hub_cache

SAFE_INDEX = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, else as huggingface_hub read it at import."""
    from huggingface_hub import constants

    values = [os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    if any(v is not None for v in values):
        return any((v or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in values)
    return bool(constants.is_offline_mode())


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=str(hub_cache.hub_cache_dir())))


def fetch_metadata(repo_id: str, revision: str | None = None) -> Path:
    """Download ``config.json`` and the safetensors index (if the repo has one) of ``repo_id``;
    the snapshot folder they are in. No weights are fetched here."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    try:
        config = _download(repo_id, "config.json", revision)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"LLM source {repo_id!r}: could not download its config.json from the Hugging Face hub: {exc}"
        ) from exc
    try:
        _download(repo_id, SAFE_INDEX, config.parent.name)
    except EntryNotFoundError:
        pass  # a single-file checkpoint: model.safetensors is fetched when the weights are read
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(f"LLM source {repo_id!r}: could not download {SAFE_INDEX}: {exc}") from exc
    return config.parent


def snapshot_repo(folder: Path) -> tuple[str, str] | None:
    """(repo id, commit) of a snapshot folder of the Hugging Face cache, else None."""
    folder = Path(folder)
    cache = hub_cache.hub_cache_dir().resolve()
    repo_dir = folder.parent.parent
    if folder.parent.name != "snapshots" or not repo_dir.name.startswith("models--"):
        return None
    try:
        if repo_dir.resolve().parent != cache:
            return None
    except OSError:
        return None
    return repo_dir.name[len("models--") :].replace("--", "/"), folder.name


def layer_keys(
    weight_map: Iterable[str],
    spec: ArchitectureSpec,
    layer_names: dict[int, list[str]],
    final_norm_names: list[str] | None,
) -> list[str]:
    """The checkpoint keys of the chosen layers (and final norm), named as hf_folder reads them."""
    keys = list(weight_map)
    prefix = next(
        (
            p
            for p in spec.layer_prefixes
            if any(k.startswith(p) and k[len(p) :].split(".", 1)[0].isdigit() for k in keys)
        ),
        None,
    )
    wanted = [f"{prefix}{i}.{n}" for i, names in layer_names.items() for n in names] if prefix is not None else []
    if final_norm_names is not None:
        norm_prefix = next((p for p in spec.final_norm_prefixes if any(k.startswith(p) for k in keys)), None)
        if norm_prefix is not None:
            wanted += [norm_prefix + n for n in final_norm_names]
    return wanted


def range_requests_enabled() -> bool:
    return os.environ.get("MMLLM_HUB_RANGE_REQUESTS", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def ensure_layers(
    folder: Path,
    spec: ArchitectureSpec,
    layer_names: dict[int, list[str]],
    final_norm_names: list[str] | None,
    range_requests: bool | None = None,
) -> Path:
    """Download the shard(s) holding the chosen layers into a hub snapshot folder (nothing for a
    folder outside the Hugging Face cache, or offline: then a missing shard is hf_folder's error).
    The folder to read the layers from: ``folder``, or with range requests on a single-file
    checkpoint a small folder holding only the chosen tensors."""
    folder = Path(folder)
    index = folder / SAFE_INDEX
    if index.is_file():
        weight_map = _weight_map(index)
        ensure_keys(folder, layer_keys(weight_map, spec, layer_names, final_norm_names))
        return folder
    found = snapshot_repo(folder)
    use_ranges = range_requests_enabled() if range_requests is None else range_requests
    if found is None or not use_ranges or (folder / SINGLE_FILE).is_file():
        ensure_keys(folder, [])
        return folder
    repo_id, commit = found
    asked = json.dumps([sorted((str(i), sorted(n)) for i, n in layer_names.items()), final_norm_names])
    digest = hashlib.sha256(asked.encode()).hexdigest()[:16]
    target = (
        hub_cache.hub_cache_dir().parent / "mmllm-ranges" / f"models--{repo_id.replace('/', '--')}" / commit / digest
    )
    if (target / SINGLE_FILE).is_file() and (target / "config.json").is_file():
        return target
    if is_offline():
        return folder  # hf_folder then says no weights were found in the snapshot
    header = _read_header(repo_id, commit)
    wanted = layer_keys([k for k in header if k != "__metadata__"], spec, layer_names, final_norm_names)
    _write_ranges(repo_id, commit, header, wanted, folder / "config.json", target)
    return target


def _url(repo_id: str, commit: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, SINGLE_FILE, revision=commit)


def _get_range(repo_id: str, commit: str, start: int, end: int) -> bytes:
    """Bytes [start, end) of the repo's model.safetensors, checked for length."""
    from huggingface_hub.utils import build_hf_headers, get_session

    if end <= start:
        return b""
    headers = {**build_hf_headers(), "Range": f"bytes={start}-{end - 1}"}
    try:
        response = get_session().get(_url(repo_id, commit), headers=headers, follow_redirects=True)
        response.raise_for_status()
    except Exception as exc:  # the HTTP client's own errors
        raise CheckpointError(
            f"LLM source {repo_id!r}: range request bytes={start}-{end - 1} of {SINGLE_FILE} failed: {exc}"
        ) from exc
    data = response.content
    if response.status_code != 206 or len(data) != end - start:
        raise CheckpointError(
            f"LLM source {repo_id!r}: the server answered bytes={start}-{end - 1} of {SINGLE_FILE} "
            f"with status {response.status_code} and {len(data)} bytes (expected 206 and "
            f"{end - start}); it may not support range requests"
        )
    return data


def _read_header(repo_id: str, commit: str) -> dict:
    """The safetensors JSON header, with each tensor's absolute [start, end) in ``_abs``."""
    (length,) = struct.unpack("<Q", _get_range(repo_id, commit, 0, 8))
    if length > 100_000_000:
        raise CheckpointError(f"LLM source {repo_id!r}: {SINGLE_FILE} header of {length} bytes is not safetensors")
    try:
        header = json.loads(_get_range(repo_id, commit, 8, 8 + length))
    except ValueError as exc:
        raise CheckpointError(f"LLM source {repo_id!r}: {SINGLE_FILE} has a malformed header: {exc}") from exc
    for name, info in header.items():
        if name != "__metadata__":
            start, end = info["data_offsets"]
            info["_abs"] = (8 + length + start, 8 + length + end)
    return header


def _write_ranges(repo_id: str, commit: str, header: dict, keys: list[str], config: Path, target: Path) -> None:
    """A safetensors file of ``keys`` (bytes as stored) and config.json, moved into ``target`` at once."""
    missing = [k for k in keys if k not in header]
    if missing:
        raise CheckpointError(f"LLM source {repo_id!r}: {SINGLE_FILE} has no tensor {missing[0]!r}")
    new_header: dict = {}
    blobs: list[bytes] = []
    offset = 0
    for key in keys:
        info = header[key]
        data = _get_range(repo_id, commit, *info["_abs"])
        new_header[key] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(new_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        with open(tmp / SINGLE_FILE, "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            for blob in blobs:
                out.write(blob)
        shutil.copyfile(config, tmp / "config.json")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / SINGLE_FILE).is_file():  # else another process wrote the same folder first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_keys(folder: Path, keys: Iterable[str]) -> list[str]:
    """Download the files of a hub snapshot folder that hold ``keys`` and are not there yet; the
    file names downloaded."""
    found = snapshot_repo(Path(folder))
    if found is None or is_offline():
        return []
    repo_id, commit = found
    index = Path(folder) / SAFE_INDEX
    if index.is_file():
        weight_map = _weight_map(index)
        files = sorted({weight_map[k] for k in keys if k in weight_map})
    else:
        files = [SINGLE_FILE]
    missing = [f for f in files if not (Path(folder) / f).is_file()]
    for name in missing:
        try:
            _download(repo_id, name, commit)
        except Exception as exc:  # huggingface_hub's HTTP and entry errors
            raise CheckpointError(f"LLM source {repo_id!r}: could not download {name}: {exc}") from exc
    return missing


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: malformed shard index: {exc}") from exc
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: malformed shard index: weight_map is not an object")
    return weight_map
