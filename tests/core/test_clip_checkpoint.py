"""open_clip weights for the METER-style hosts' vision encoder (mmllm/models/encoders.py ``build_vision_encoder``):
the files open_clip releases (``open_clip_pytorch_model.bin`` / ``.safetensors``, a training run's
``{'state_dict': ...}`` with DDP's ``module.`` prefix) and a pretrained tag served by a loopback stand-in for the
hub. The reference is open_clip's own model at random init, in a tiny config; outputs must be bitwise equal."""

import json
import socket
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from test_hub_download import go_offline, serve_on_loopback

from mmllm.errors import CheckpointError
from mmllm.models.encoders import VisionEncoder, VisionOptions, build_vision_encoder

TINY = "mmllm-test-tiny-clip"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
TAG_REPO = "tiny-org/tiny-clip"


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    """Register the tiny config with open_clip (its public ``add_model_config``) under a name of its own."""
    path = tmp_path_factory.mktemp("open_clip_cfg") / f"{TINY}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)
    return TINY


def reference(name, seed=0):
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval()


def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


def encoder(name, checkpoint, seed=1) -> VisionEncoder:
    torch.manual_seed(seed)  # another init than the reference: equality comes from the file
    return build_vision_encoder(VisionOptions(name=name, checkpoint=str(checkpoint))).eval()


def assert_matches_reference(enc, ref):
    """The encoder's tokens are the reference tower's tokens; its CLS token, projected, is CLIP's image embedding."""
    x = images()
    ref.visual.output_tokens = True
    with torch.no_grad():
        _, ref_tokens = ref.visual(x)
        tokens = enc(x)
        assert torch.equal(tokens[:, 1:], ref_tokens)
        ref.visual.output_tokens = False
        assert torch.equal(tokens[:, 0] @ ref.visual.proj, ref.encode_image(x))


@pytest.fixture(scope="module")
def released(tiny_name, tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_releases")
    state = reference(tiny_name).state_dict()
    (root / "hub").mkdir()
    torch.save(state, root / "hub" / "open_clip_pytorch_model.bin")
    save_file(state, root / "open_clip_pytorch_model.safetensors")
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "epoch_32.pt")
    return {
        "bin": root / "hub" / "open_clip_pytorch_model.bin",
        "safetensors": root / "open_clip_pytorch_model.safetensors",
        "training run": root / "epoch_32.pt",
    }


@pytest.mark.parametrize("layout", ["bin", "safetensors", "training run"])
def test_released_layouts_give_the_reference_outputs(tiny_name, released, layout):
    assert_matches_reference(encoder(tiny_name, released[layout]), reference(tiny_name))


def edited(tmp_path, released, edit):
    state = torch.load(released["bin"], weights_only=True)
    edit(state)
    path = tmp_path / "edited.bin"
    torch.save(state, path)
    return path


def test_wrong_shape_names_the_key(tiny_name, released, tmp_path):
    def shrink(state):
        state["visual.transformer.resblocks.1.mlp.c_fc.weight"] = torch.zeros(64, 32)

    with pytest.raises(
        CheckpointError,
        match=r"model.vision.checkpoint .* first key that does not fit: visual\.transformer\.resblocks\.1\.mlp\.c_fc"
        r"\.weight \(shape \(64, 32\) in the file, \(128, 32\) in the model\)",
    ):
        encoder(tiny_name, edited(tmp_path, released, shrink))


def test_wrong_name_and_missing_tensor_name_the_key(tiny_name, released, tmp_path):
    def rename(state):
        state["visual.ln_postx.weight"] = state.pop("visual.ln_post.weight")

    with pytest.raises(CheckpointError, match=r"first key that does not fit: visual\.ln_postx\.weight \(in the file"):
        encoder(tiny_name, edited(tmp_path, released, rename))
    with pytest.raises(CheckpointError, match=r"first key that does not fit: visual\.ln_post\.weight \(in the model"):
        encoder(tiny_name, edited(tmp_path, released, lambda state: state.pop("visual.ln_post.weight")))


def test_nan_tensor_is_named(tiny_name, released, tmp_path):
    def diverged(state):
        state["visual.transformer.resblocks.1.mlp.c_fc.weight"][0, 0] = float("nan")

    with pytest.raises(
        CheckpointError,
        match=r"model.vision.checkpoint .*edited\.bin: tensor\(s\) \['visual\.transformer\.resblocks\.1\.mlp\.c_fc"
        r"\.weight'\] hold NaN or inf",
    ):
        encoder(tiny_name, edited(tmp_path, released, diverged))


def test_a_file_for_another_model_is_our_error_not_torchs(released):
    """The tiny file into open_clip's ViT-B-32 (random init, no download): a CheckpointError naming a key."""
    with pytest.raises(CheckpointError, match=r"does not fit the model: first key that does not fit: \S+ \("):
        encoder("ViT-B-32", released["bin"])


def test_torchscript_archive_is_refused_not_run(tiny_name, tmp_path):
    """OpenAI's JIT release layout: torch reads it only with weights_only=False, so it is refused with a way out."""
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(CheckpointError, match=r"TorchScript archive .* pretrained tag 'openai'"):
        encoder(tiny_name, path)


def test_pickled_code_is_refused(tiny_name, released, tmp_path):
    path = tmp_path / "planted.bin"
    torch.save({"state_dict": torch.load(released["bin"], weights_only=True), "hook": Path}, path)  # a class
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        encoder(tiny_name, path)


def test_unknown_tag_lists_the_models_tags():
    with pytest.raises(CheckpointError, match=r"neither a file nor an open_clip pretrained tag of ViT-B-32 .*laion2b"):
        encoder("ViT-B-32", "no_such_tag")


def test_real_tag_offline_names_the_tag_and_the_network(tmp_path, monkeypatch):
    """The real tag of ViT-B-32 with HF_HUB_OFFLINE=1 (conftest) and an empty cache: our error, no connection."""

    def no_network(address, *args, **kwargs):
        raise AssertionError(f"connection to {address}")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cold"))
    with pytest.raises(
        CheckpointError, match=r"tag 'laion2b_s34b_b79k' of ViT-B-32 .* needs the network .*HF_HUB_OFFLINE=1"
    ):
        encoder("ViT-B-32", "laion2b_s34b_b79k")


# ------------------------------------------------------------------ a pretrained tag, on loopback only
@pytest.fixture
def hub(tiny_name, released, tmp_path, monkeypatch):
    """``tinytag`` of the tiny model, served as open_clip's hub layout (``TAG_REPO/open_clip_pytorch_model.bin``)."""
    from open_clip import pretrained

    tag = {"url": "", "hf_hub": f"{TAG_REPO}/", "mean": None, "std": None}
    monkeypatch.setitem(pretrained._PRETRAINED, tiny_name, {"tinytag": tag})  # open_clip's tag table
    server = serve_on_loopback({TAG_REPO: released["bin"].parent}, monkeypatch, tmp_path)
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_tag_downloads_through_open_clip_then_serves_offline(tiny_name, hub, monkeypatch, tmp_path):
    ref = reference(tiny_name)
    assert_matches_reference(encoder(tiny_name, "tinytag"), ref)
    assert hub.files("GET") == [f"{TAG_REPO}/open_clip_pytorch_model.bin"]  # after open_clip asked for safetensors
    go_offline(monkeypatch)
    before = len(hub.requests)
    assert_matches_reference(encoder(tiny_name, "tinytag"), ref)
    assert len(hub.requests) == before  # the warm cache, no request
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cold"))
    with pytest.raises(CheckpointError, match=r"tag 'tinytag' .* needs the network .*HF_HUB_OFFLINE=1.*local"):
        encoder(tiny_name, "tinytag")
    assert len(hub.requests) == before
