"""mmllm.create_model_and_transforms (open_clip's convention) for registered tasks."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from tiny_llms import save_tiny

import mmllm
from mmllm import ConfigError, FrozenLLMBlock
from mmllm.config import load_config

ROOT = Path(__file__).resolve().parents[2]
VQA_CONFIG = ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml"
VOCAB = ["yes", "no", "red", "green", "blue"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("factory")
    save_tiny("llama", folder / "llm")
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    return folder


def _images():
    """Two PIL images of other sizes than the model's input: the transform must resize them."""
    return [Image.new("RGB", (50, 40), (200, 10, 10)), Image.new("RGB", (30, 90), (10, 10, 200))]


def test_vqa_from_name_with_a_tiny_block(tiny):
    model, train_tf, eval_tf, tokenizer = mmllm.create_model_and_transforms(
        "mmllm_vqa",
        options=[f"datasets.mmllm_vqa.answer_vocab={tiny / 'vocab.json'}"],
        model={"llm_block": {"source": str(tiny / "llm"), "dtype": "float32"}},
    )
    blocks = [m for m in model.modules() if isinstance(m, FrozenLLMBlock)]
    assert len(blocks) == 1 and blocks[0].layer_indices == [3]  # "last" of the tiny 4-layer LLM
    size = load_config(VQA_CONFIG).model.vision.vit.image_size  # composed: the model section is a _base_ file
    images = torch.stack([eval_tf(im) for im in _images()])
    assert images.shape == (2, 3, size, size)
    assert torch.stack([train_tf(im) for im in _images()]).shape == (2, 3, size, size)
    text = tokenizer(["what color is the image?", "is it red?"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        logits = model(images, text["input_ids"], text["attention_mask"])
    assert logits.shape == (2, len(VOCAB)) and torch.isfinite(logits).all()


def test_lavis_arch_name_yaml_path_and_dotted_overrides_agree(tiny):
    vocab = f"datasets.mmllm_vqa.answer_vocab={tiny / 'vocab.json'}"
    by_arch = mmllm.create_model_and_transforms("mmllm_meter_vqa", options=[vocab], **{"model.llm_block.kind": "none"})
    by_path = mmllm.create_model_and_transforms(str(VQA_CONFIG), options=[vocab, "model.llm_block.kind=none"])
    for model, *_ in (by_arch, by_path):
        assert not any(isinstance(m, FrozenLLMBlock) for m in model.modules())
        assert not any("llm_block" in name for name, _ in model.named_parameters())
    assert {k: v.shape for k, v in by_arch.model.state_dict().items()} == {
        k: v.shape for k, v in by_path.model.state_dict().items()
    }


def test_retrieval_from_name(tiny):
    model, _, eval_tf, tokenizer = mmllm.create_model_and_transforms(
        "mmllm_retrieval", **{"model.llm_block.kind": "none"}
    )
    images = torch.stack([eval_tf(im) for im in _images()])
    text = tokenizer(["a red emoji", "a blue emoji"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        image_tokens, image_feat = model.image_features(images)
        text_tokens, text_feat = model.text_features(text["input_ids"], text["attention_mask"])
        sim = model.similarity(image_feat, text_feat)
        itm = model.itm_logits(image_tokens, text_tokens, text["attention_mask"] == 0)
    assert sim.shape == (2, 2) and torch.isfinite(sim).all() and itm.shape == (2, 2)


def test_dict_config_without_a_tokenizer(tmp_path):
    """Image classification from a mapping: no text, so the tokenizer is None."""
    for name in ("cat", "dog", "fox"):
        (tmp_path / "train" / name).mkdir(parents=True)
    cfg = yaml.safe_load((ROOT / "configs/vision/image_cls_mnist.yaml").read_text())
    cfg["datasets"]["mmllm_image_cls"].update(root=str(tmp_path), prepare=None)
    model, train_tf, eval_tf, tokenizer = mmllm.create_model_and_transforms(cfg, **{"model.llm_block.kind": "none"})
    assert tokenizer is None and model.num_classes == 3
    x = eval_tf(_images()[0])
    assert x.shape == (3, 28, 28)  # the config's vit_kwargs.img_size
    with torch.no_grad():
        assert model.eval()(x[None]).shape == (1, 3)


def test_bad_names_and_overrides():
    with pytest.raises(ConfigError, match="did you mean 'mmllm_vqa'"):
        mmllm.create_model_and_transforms("mmllm_vqq")
    with pytest.raises(ConfigError, match="did you mean 'mmllm_meter_retrieval'"):
        mmllm.create_model_and_transforms("mmllm_meter_retreival")
    with pytest.raises(ConfigError, match="dotted key"):
        mmllm.create_model_and_transforms("mmllm_vqa", llm_block={"kind": "none"})
    with pytest.raises(ConfigError, match="does not exist"):
        mmllm.create_model_and_transforms("no/such/config.yaml")
