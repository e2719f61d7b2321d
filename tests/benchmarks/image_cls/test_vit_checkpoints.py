"""Released ViT/DeiT weights into the image classifier's ViT (vision/classification/model.py) and the ``*_llm``
timm models: each file layout as timm writes it for the hub (``save_for_hf``: ``model.safetensors``,
``pytorch_model.bin``), DeiT's ``{'model': ...}`` ``.pth``, and hub ids served by a loopback stand-in for the
hub. The reference is timm's own model at random init; outputs must be bitwise equal."""

import pytest
import timm
import torch
from test_hub_download import go_offline, serve_on_loopback

import vision.classification  # noqa: F401 - registers the *_llm timm names
from mmllm.errors import CheckpointError, ConfigError
from vision.classification.model import create_vit

ARCH = {"img_size": 32, "depth": 3}  # timm's vit_tiny_patch16_224 widths (192, 3 heads), 2x2 patches, 3 blocks
REPO = "timm/deit_tiny_patch16_224.fb_in1k"  # what vit_tiny_patch16_224_llm's pretrained_cfg names
BIN_REPO = "tiny-org/vit-tiny-bin"


def reference(num_classes=10, seed=0, **arch):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **{**ARCH, **arch}
    ).eval()


def images(size=32):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))


def ours(source, num_classes=10, seed=1, **arch):
    torch.manual_seed(seed)  # another init than the reference: equality comes from the file
    return create_vit("vit_tiny_patch16_224", num_classes, {**ARCH, **arch}, str(source)).eval()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """The reference saved in each released layout: {layout: path}."""
    root = tmp_path_factory.mktemp("vit_releases")
    ref = reference()
    timm.models.save_for_hf(ref, root / "hub_safe", safe_serialization=True)
    timm.models.save_for_hf(ref, root / "hub_bin", safe_serialization=False)
    torch.save({"model": ref.state_dict(), "epoch": 299}, root / "deit_tiny_patch16_224-0000.pth")
    return {
        "model.safetensors": root / "hub_safe" / "model.safetensors",
        "pytorch_model.bin": root / "hub_bin" / "pytorch_model.bin",
        "deit .pth": root / "deit_tiny_patch16_224-0000.pth",
        "hub folder": root / "hub_safe",
    }


@pytest.mark.parametrize("layout", ["model.safetensors", "pytorch_model.bin", "deit .pth", "hub folder"])
def test_released_layouts_give_the_reference_outputs(released, layout):
    ref, vit, x = reference(), ours(released[layout]), images()
    with torch.no_grad():
        assert torch.equal(vit(x), ref(x))
        assert torch.equal(vit.forward_features(x), ref.forward_features(x))


def test_head_of_another_size_is_reinitialised_the_rest_loaded(released):
    ref, x = reference(), images()
    vit = ours(released["model.safetensors"], num_classes=5)
    assert vit.head.weight.shape == (5, 192)
    with torch.no_grad():
        assert torch.equal(
            vit.forward_head(vit.forward_features(x), pre_logits=True),
            ref.forward_head(ref.forward_features(x), pre_logits=True),
        )


def edited(tmp_path, released, edit):
    state = timm.models.load_state_dict(str(released["model.safetensors"]))
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


def test_wrong_shape_names_the_key(tmp_path, released):
    def widen(state):
        state["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 192)

    with pytest.raises(
        CheckpointError,
        match=r"first key that does not fit: blocks\.1\.mlp\.fc1\.weight \(shape \(100, 192\) in the file, \(768, 192\)",
    ):
        ours(edited(tmp_path, released, widen))


def test_wrong_name_and_missing_tensor_name_the_key(tmp_path, released):
    def rename(state):
        state["blocks.2.norm_1.weight"] = state.pop("blocks.2.norm1.weight")

    with pytest.raises(
        CheckpointError,
        match=r"first key that does not fit: blocks\.2\.norm_1\.weight \(in the file, not in the model\)",
    ):
        ours(edited(tmp_path, released, rename))
    with pytest.raises(
        CheckpointError,
        match=r"first key that does not fit: blocks\.2\.norm1\.weight \(in the model, missing from the file\)",
    ):
        ours(edited(tmp_path, released, lambda state: state.pop("blocks.2.norm1.weight")))


def test_nan_tensor_is_named(tmp_path, released):
    def diverged(state):
        state["blocks.2.attn.qkv.bias"][5] = float("-inf")

    with pytest.raises(CheckpointError, match=r"tensor\(s\) \['blocks\.2\.attn\.qkv\.bias'\] hold NaN or inf"):
        ours(edited(tmp_path, released, diverged))


def test_another_architecture_names_the_first_key(released):
    with pytest.raises(
        CheckpointError, match="model.checkpoint .* does not fit the model: first key that does not fit: blocks.3"
    ):
        ours(released["model.safetensors"], depth=4)  # a block more than the file has


# ------------------------------------------------------------------ hub ids, on loopback only
@pytest.fixture
def hub(released, tmp_path, monkeypatch):
    """The tiny release served as ``REPO`` (safetensors) and ``BIN_REPO`` (pytorch_model.bin only), in a fresh
    HF_HOME; any connection off loopback fails the test (the pattern of test_hub_download.py)."""
    server = serve_on_loopback(
        {REPO: released["hub folder"], BIN_REPO: released["pytorch_model.bin"].parent}, monkeypatch, tmp_path
    )
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_hub_id_downloads_through_timm_and_then_serves_offline(hub, monkeypatch):
    ref, x = reference(), images()
    with torch.no_grad():
        assert torch.equal(ours(REPO)(x), ref(x))
        assert torch.equal(ours(f"hf-hub:{BIN_REPO}")(x), ref(x))  # timm's prefix; no safetensors: the .bin
    assert set(hub.files("GET")) == {f"{REPO}/model.safetensors", f"{BIN_REPO}/pytorch_model.bin"}
    go_offline(monkeypatch)
    before = len(hub.requests)
    with torch.no_grad():
        assert torch.equal(ours(REPO)(x), ref(x))
    assert len(hub.requests) == before  # the warm cache, no request


def test_hub_id_offline_cold_cache_is_a_clear_error(hub, monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(
        CheckpointError,
        match=r"'timm/deit_tiny_patch16_224.fb_in1k'.*not in the local Hugging Face cache.*HF_HUB_OFFLINE=1",
    ):
        ours(REPO)
    assert hub.requests == []


def test_unknown_hub_id_online_is_a_clear_error(hub):
    with pytest.raises(CheckpointError, match=r"'tiny-org/missing'.*could not be downloaded"):
        ours("tiny-org/missing")


def test_timm_pretrained_true_loads_the_cfg_hub_id(hub, monkeypatch, tmp_path):
    assert (
        timm.get_pretrained_cfg("vit_tiny_patch16_224_llm").hf_hub_id
        == timm.get_pretrained_cfg("deit_tiny_patch16_224").hf_hub_id
        == REPO
    )
    ref, x = reference(), images()
    torch.manual_seed(1)
    model = timm.create_model(
        "vit_tiny_patch16_224_llm", pretrained=True, llm_block={"kind": "none"}, num_classes=10, **ARCH
    ).eval()
    with torch.no_grad():
        assert torch.equal(model.vit(x), ref(x))
        assert torch.equal(model(x), ref(x))  # no block: the classifier is the ViT
    assert hub.files("GET") == [f"{REPO}/model.safetensors"]
    with pytest.raises(ConfigError, match="not both"):
        timm.create_model("vit_tiny_patch16_224_llm", pretrained=True, llm_block={"kind": "none"}, vit_checkpoint=REPO)
    go_offline(monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cold"))  # a cache that never saw the repo
    with pytest.raises(
        CheckpointError, match=r"pretrained=True .*'timm/deit_tiny_patch16_224.fb_in1k'.*HF_HUB_OFFLINE=1"
    ):
        timm.create_model("vit_tiny_patch16_224_llm", pretrained=True, llm_block={"kind": "none"}, **ARCH)


def test_pretrained_true_without_released_weights_is_a_config_error():
    with pytest.raises(ConfigError, match="pretrained=True has nothing to load"):
        timm.create_model("vit_tiny_patch7_28_llm", pretrained=True, llm_block={"kind": "none"})
