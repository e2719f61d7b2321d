"""Hub ids downloaded by the bytes they need (mmllm.loading.hub), against a loopback stand-in for the
Hugging Face hub: a threading HTTP server on 127.0.0.1 serving a tiny LLaMA checkpoint in the hub's
URL layout. Any connection to another address fails the test."""

import hashlib
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_llms import save_tiny

from mmllm import FrozenLLMBlock
from mmllm.errors import CheckpointError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHARDED = "tiny-org/llama-sharded"
SINGLE = "tiny-org/llama-single"


class Hub:
    """Files per repo; records (method, repo, file, Range header) of every request."""

    def __init__(self, repos: dict[str, Path]):
        self.ignore_ranges = False  # True: answer a Range request with the whole file (a server without ranges)
        self.repos = repos
        self.requests: list[tuple[str, str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                parts = self.path.split("?")[0].strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                    hub.requests.append((self.command, repo, name, self.headers.get("Range")))
                    path = hub.repos.get(repo, Path("/nonexistent")) / name
                    if repo in hub.repos and path.is_file():
                        return self._file(path, body)
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if repo in hub.repos else "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                hub.requests.append((self.command, "", self.path, None))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _file(self, path: Path, body: bool):
                data = path.read_bytes()
                etag = hashlib.sha256(data).hexdigest()
                status, start, end = 200, 0, len(data)
                if self.headers.get("Range") and not hub.ignore_ranges:
                    first, last = self.headers["Range"].removeprefix("bytes=").split("-")
                    start, end, status = int(first), (int(last) + 1 if last else len(data)), 206
                self.send_response(status)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if body:
                    self.wfile.write(data[start:end])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def files(self, method: str = "GET") -> list[str]:
        return [f"{repo}/{name}" for m, repo, name, _ in self.requests if m == method and repo]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_files")
    save_tiny("llama", root / "sharded", max_shard_size="100KB")
    save_tiny("llama", root / "single")
    assert (root / "sharded" / "model.safetensors.index.json").is_file()
    assert not (root / "single" / "model.safetensors.index.json").exists()
    return root


def serve_on_loopback(repos: dict, monkeypatch, tmp_path) -> Hub:
    """A :class:`Hub` serving ``repos`` (id -> folder) that huggingface_hub talks to, in a fresh HF_HOME, with
    every connection off loopback failing the test. The caller shuts ``server.server`` down."""
    from huggingface_hub import constants

    server = Hub(repos)
    real = socket.create_connection

    def loopback_only(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise AssertionError(f"connection to {address} outside loopback")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", loopback_only)
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return server


@pytest.fixture
def hub(checkpoints, tmp_path, monkeypatch):
    server = serve_on_loopback(
        {SHARDED: checkpoints / "sharded", SINGLE: checkpoints / "single"}, monkeypatch, tmp_path
    )
    monkeypatch.delenv("MMLLM_HUB_RANGE_REQUESTS", raising=False)
    yield server
    server.server.shutdown()
    server.server.server_close()


def go_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def block(source, layers, **kw):
    torch.manual_seed(0)  # the same adapters, so whole blocks compare
    return FrozenLLMBlock.from_pretrained(source, layers=layers, visual_dim=16, dtype="fp32", **kw)


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def shard_of(folder: Path, layer: int) -> set[str]:
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return {f for k, f in weight_map.items() if k.startswith(f"model.layers.{layer}.")}


def test_sharded_fetches_config_index_and_the_layers_shard_only(hub, checkpoints, monkeypatch):
    shards = sorted(
        {
            f
            for f in json.loads((checkpoints / "sharded" / "model.safetensors.index.json").read_text())[
                "weight_map"
            ].values()
        }
    )
    needed = shard_of(checkpoints / "sharded", 3)
    assert len(needed) <= len(shards) - 2  # a real choice: other shards are left on the server

    got = block(SHARDED, 3)
    assert_same(got, block(str(checkpoints / "sharded"), 3))
    fetched = {f.removeprefix(SHARDED + "/") for f in hub.files("GET")}
    assert fetched == {"config.json", "model.safetensors.index.json", *needed}
    snapshot = Path(hub_cache_snapshot(SHARDED))
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(
        {"config.json", "model.safetensors.index.json", *needed}
    )

    # another layer adds just its shard; offline, the warm cache serves both with no request
    block(SHARDED, 0)
    assert {f.removeprefix(SHARDED + "/") for f in hub.files("GET")} == fetched | shard_of(checkpoints / "sharded", 0)
    go_offline(monkeypatch)
    before = len(hub.requests)
    assert_same(block(SHARDED, 3), got)
    assert len(hub.requests) == before


def hub_cache_snapshot(repo_id: str) -> Path:
    from mmllm.loading.hub_cache import hub_cache_dir

    return hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT


def test_hub_id_as_config_source(hub, checkpoints):
    from mmllm import build_block

    torch.manual_seed(0)
    got = build_block({"kind": "llm_block", "source": SHARDED, "layers": 1, "dtype": "fp32"}, visual_dim=16)
    assert_same(got, block(str(checkpoints / "sharded"), 1))
    assert {f.removeprefix(SHARDED + "/") for f in hub.files("GET")} == {
        "config.json",
        "model.safetensors.index.json",
        *shard_of(checkpoints / "sharded", 1),
    }


def test_single_file_by_range_requests(hub, checkpoints, monkeypatch):
    monkeypatch.setenv("MMLLM_HUB_RANGE_REQUESTS", "1")
    got = block(SINGLE, 2)
    assert_same(got, block(str(checkpoints / "single"), 2))
    # the requested ranges: the 8-byte length, the header, then exactly layer 2's tensors' bytes
    ranges = [r for m, repo, n, r in hub.requests if m == "GET" and n == "model.safetensors"]
    data = (checkpoints / "single" / "model.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    expected = {
        f"bytes={8 + length + s}-{8 + length + e - 1}"
        for k, v in header.items()
        if k.startswith("model.layers.2.")
        for s, e in [v["data_offsets"]]
    }
    assert None not in ranges  # never the whole file
    assert ranges[:2] == ["bytes=0-7", f"bytes=8-{8 + length - 1}"]
    assert set(ranges[2:]) == expected and len(ranges) == 2 + len(expected)
    fetched = sum(int(r.split("-")[1]) - int(r.removeprefix("bytes=").split("-")[0]) + 1 for r in ranges)
    assert fetched < len(data) / 3
    # the small local file holds just those tensors, bytes as stored
    small = next((Path(hub_cache_snapshot(SINGLE)).parents[3] / "mmllm-ranges").rglob("model.safetensors"))
    with safe_open(str(small), "pt") as f, safe_open(str(checkpoints / "single" / "model.safetensors"), "pt") as ref:
        assert set(f.keys()) == {k for k in header if k.startswith("model.layers.2.")}
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), ref.get_tensor(k))
    # offline, the cached small file serves the same layer
    go_offline(monkeypatch)
    before = len(hub.requests)
    assert_same(block(SINGLE, 2), got)
    assert len(hub.requests) == before


def test_range_requests_as_a_block_option(hub, checkpoints):
    """``hub_range_requests: true`` in the block's options (no environment variable): only byte ranges."""
    from mmllm import build_block

    torch.manual_seed(0)
    options = {"kind": "llm_block", "source": SINGLE, "layers": 1, "dtype": "fp32", "hub_range_requests": True}
    got = build_block(options, visual_dim=16)
    assert_same(got, block(str(checkpoints / "single"), 1))
    ranges = [r for m, repo, n, r in hub.requests if m == "GET" and n == "model.safetensors"]
    assert ranges[:1] == ["bytes=0-7"] and None not in ranges  # never the whole file


def test_a_server_ignoring_ranges_is_refused_not_read(hub, checkpoints, monkeypatch):
    """A 200 with the whole file where a 206 with the asked bytes was due: a clear error, no small file cached."""
    monkeypatch.setenv("MMLLM_HUB_RANGE_REQUESTS", "1")
    hub.ignore_ranges = True
    with pytest.raises(CheckpointError, match=r"answered bytes=0-7 .* status 200 .* may not support range requests"):
        block(SINGLE, 2)
    assert not list((Path(hub_cache_snapshot(SINGLE)).parents[3] / "mmllm-ranges").rglob("model.safetensors"))


def test_single_file_downloaded_whole_without_range_option(hub, checkpoints):
    assert_same(block(SINGLE, 1), block(str(checkpoints / "single"), 1))
    assert set(hub.files("GET")) == {f"{SINGLE}/config.json", f"{SINGLE}/model.safetensors"}


def test_offline_cold_cache_is_a_clear_error(hub, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(
        CheckpointError, match=r"tiny-org/llama-sharded.*not in the local Hugging Face cache.*HF_HUB_OFFLINE=1"
    ):
        block(SHARDED, 3)
    assert hub.requests == []


def test_unknown_repo_online_is_a_clear_error(hub):
    with pytest.raises(CheckpointError, match="tiny-org/missing.*config.json"):
        block("tiny-org/missing", 0)
