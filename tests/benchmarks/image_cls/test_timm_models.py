"""The ViT + LLM-block classifiers as timm models (vision/classification/timm_models.py)."""

import ast
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from tiny_llms import save_tiny

import vision.classification  # noqa: F401 - registers the timm names
from mmllm.errors import ConfigError
from vision.classification.model import ViTLLMClassifier

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_block(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm") / "llama"
    save_tiny("llama", folder)
    return {"kind": "llm_block", "source": str(folder), "layers": "-2:", "dtype": "float32"}


def _images(n=3, size=28, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registered_names():
    assert {"vit_tiny_patch16_224_llm", "vit_small_patch16_224_llm", "vit_tiny_patch7_28_llm"} <= set(
        timm.list_models("*_llm")
    )


def test_create_model_with_block_and_real_input_size(tiny_block):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch7_28_llm", llm_block=tiny_block, num_classes=7, depth=2).eval()
    assert isinstance(model, ViTLLMClassifier) and model.llm_block.layer_indices == [2, 3]
    assert model.num_classes == 7 and model.pretrained_cfg["num_classes"] == 7
    # the transform timm derives from the model feeds it what it expects
    config = resolve_data_config(model=model)
    assert config["input_size"] == (3, 28, 28)
    image = Image.fromarray((torch.rand(40, 36, 3) * 255).byte().numpy())
    x = create_transform(**config)(image)
    assert tuple(x.shape) == (3, 28, 28)
    with torch.no_grad():
        assert model(x[None]).shape == (1, 7)
    # input_size follows the ViT's real size, not the registered default
    bigger = timm.create_model("vit_small_patch16_224_llm", llm_block={"kind": "none"}, img_size=32, depth=1)
    assert bigger.pretrained_cfg["input_size"] == (3, 32, 32) and bigger.num_classes == 1000


def test_no_block_equals_timm_vit():
    """With ``kind: none`` the classifier is exactly timm's own ViT (same weights, timm's forward)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch7_28_llm", llm_block={"kind": "none"}, depth=3, insert_after=1).eval()
    vit = timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, depth=3, num_classes=10).eval()
    vit.load_state_dict(model.vit.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(_images()), vit(_images()), rtol=1e-5, atol=1e-5)


def test_forward_features_then_head_equals_forward(tiny_block):
    model = timm.create_model("vit_tiny_patch7_28_llm", llm_block=tiny_block, depth=2, insert_after=0).eval()
    with torch.no_grad():
        features = model.forward_features(_images())
        assert features.shape == (3, 17, 192)  # [CLS] + 16 patches
        assert torch.equal(model.forward_head(features), model(_images()))
        assert model.forward_head(features, pre_logits=True).shape == (3, model.num_features)


def test_reset_classifier_changes_the_head(tiny_block):
    model = timm.create_model("vit_tiny_patch7_28_llm", llm_block={"kind": "none"}, depth=1)
    assert model.get_classifier().out_features == 10
    model.reset_classifier(4)
    assert model.get_classifier().out_features == 4 and model.num_classes == 4
    assert model.pretrained_cfg["num_classes"] == 4
    assert model(_images()).shape == (3, 4)
    model.reset_classifier(0)
    assert model(_images()).shape == (3, model.num_features)


def test_grad_checkpointing_same_output_and_grads(tiny_block):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch7_28_llm", llm_block=tiny_block, depth=3, insert_after=0)
    model.train()  # checkpointing acts only with grad enabled; dropout and drop-path are 0

    def run():
        model.zero_grad()
        out = model(_images())
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, plain_grads = run()
    model.set_grad_checkpointing(True)
    assert model.vit.grad_checkpointing and model.llm_block.gradient_checkpointing
    checked, checked_grads = run()
    torch.testing.assert_close(checked, plain, rtol=0, atol=0)
    assert plain_grads.keys() == checked_grads.keys() and "llm_block.adapter_in.weight" in plain_grads
    for name in plain_grads:
        torch.testing.assert_close(checked_grads[name], plain_grads[name], rtol=1e-6, atol=1e-7)


def test_bad_options_are_errors():
    with pytest.raises(ConfigError, match="pretrained"):
        timm.create_model("vit_tiny_patch7_28_llm", pretrained=True, llm_block={"kind": "none"})
    with pytest.raises(ConfigError, match="insert_after"):
        timm.create_model("vit_tiny_patch7_28_llm", llm_block={"kind": "none"}, depth=2, insert_after=5)


def test_no_private_timm_attributes():
    """The classifier uses timm's public API only: no ``obj._name`` access (a private timm method such as
    ``_pos_embed`` could move in any release)."""
    for path in (ROOT / "vision/classification/model.py", ROOT / "vision/classification/timm_models.py"):
        tree = ast.parse(path.read_text())
        private = [
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
        ]
        assert private == [], f"{path.name} uses private attributes {private}"
