"""VideoMAE weights into the action model (vision/action/videomae_checkpoint.py), against independent references.

Reference 1: transformers' ``VideoMAEForVideoClassification`` at random init (biases and norms randomised too, so
a misplaced bias or norm shows), saved with ``save_pretrained`` and loaded through ``model.checkpoint`` into our
model with the block kind ``none``: the logits must agree. Reference 2: the same tensors renamed, in this file
and by hand, to the module names of the released code (github.com/MCG-NJU/VideoMAE ``modeling_finetune.py``:
``PatchEmbed.proj``, ``Block.norm1/attn/norm2/mlp``, ``Attention.qkv`` with ``q_bias``/``v_bias`` and no key
bias, ``Mlp.fc1/fc2``, ``VisionTransformer.fc_norm/head``), saved as ``run_class_finetuning.py`` reads it
(``{'model': state}``); pre-training files (``modeling_pretrain.py``) add ``encoder.`` and a decoder.

Tolerance: both sides run the same float32 ops on CPU (SDPA attention, the same sinusoid table), and the logits
come out bitwise equal here; the fused qkv projection is one matmul on our side and three in transformers, so
``atol=1e-6`` (rtol 0) leaves room for another BLAS summing in another order, far below any mapping error.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from tiny_llms import random_llama_block

from mmllm.errors import CheckpointError
from vision.action.model import create_videovit_model
from vision.action.videomae_checkpoint import load_videomae_checkpoint

transformers = pytest.importorskip("transformers")

DEPTH, DIM, CLASSES = 2, 64, 5
HF_ATTN = "videomae.encoder.layer.{i}.attention."


def hf_config(**overrides):
    base = dict(
        image_size=32,
        patch_size=16,
        num_frames=4,
        tubelet_size=2,
        hidden_size=DIM,
        num_hidden_layers=DEPTH,
        num_attention_heads=2,
        intermediate_size=4 * DIM,
        use_mean_pooling=True,
        num_labels=CLASSES,
        layer_norm_eps=1e-6,  # the released eps (ours); transformers' default is 1e-12
        attn_implementation="sdpa",
    )
    return transformers.VideoMAEConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def reference():
    """A random transformers classifier whose biases and norms are random too; its fc_norm eps set to ours."""
    torch.manual_seed(0)
    model = transformers.VideoMAEForVideoClassification(hf_config()).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.normal_(0, 0.5)
    model.fc_norm.eps = 1e-6  # transformers hard-codes 1e-5 here; the released fc_norm uses 1e-6
    return model


@pytest.fixture(scope="module")
def hf_folder(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "videomae"
    reference.save_pretrained(folder)
    return folder


def released_names(hf_state: dict[str, torch.Tensor], depth: int = DEPTH) -> dict[str, torch.Tensor]:
    """transformers' tensors under modeling_finetune.py's module names (written from that file, not the loader)."""
    out = {
        "patch_embed.proj.weight": hf_state["videomae.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf_state["videomae.embeddings.patch_embeddings.projection.bias"],
    }
    for i in range(depth):
        layer, attn = f"videomae.encoder.layer.{i}.", HF_ATTN.format(i=i)
        block = f"blocks.{i}."
        for p in ("weight", "bias"):
            out[block + "norm1." + p] = hf_state[layer + "layernorm_before." + p]
            out[block + "attn.proj." + p] = hf_state[attn + "output.dense." + p]
            out[block + "norm2." + p] = hf_state[layer + "layernorm_after." + p]
            out[block + "mlp.fc1." + p] = hf_state[layer + "intermediate.dense." + p]
            out[block + "mlp.fc2." + p] = hf_state[layer + "output.dense." + p]
        qkv = [hf_state[attn + f"attention.{x}.weight"] for x in ("query", "key", "value")]
        out[block + "attn.qkv.weight"] = torch.cat(qkv, dim=0)
        out[block + "attn.q_bias"] = hf_state[attn + "attention.query.bias"]
        out[block + "attn.v_bias"] = hf_state[attn + "attention.value.bias"]
    for p in ("weight", "bias"):
        out["fc_norm." + p] = hf_state["fc_norm." + p]
        out["head." + p] = hf_state["classifier." + p]
    return {k: v.clone() for k, v in out.items()}


def ours(checkpoint=None, **overrides):
    opts = dict(
        num_classes=CLASSES,
        img_size=32,
        num_frames=4,
        patch_size=16,
        tubelet_size=2,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=2,
        llm_block={"kind": "none"},
        checkpoint=None if checkpoint is None else str(checkpoint),
    )
    torch.manual_seed(1)
    return create_videovit_model({**opts, **overrides}).eval()


def video(batch=3):
    return torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))


def reference_logits(reference, clip):
    with torch.no_grad():
        return reference(pixel_values=clip.transpose(1, 2)).logits  # transformers: [B, T, C, H, W]


def assert_same_logits(model, reference):
    clip = video()
    with torch.no_grad():
        got = model(clip)
    torch.testing.assert_close(got, reference_logits(reference, clip), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def released_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("released") / "checkpoint-best.pth"
    torch.save({"model": released_names(reference.state_dict()), "epoch": 3}, path)
    return path


def test_transformers_folder_gives_the_same_logits(reference, hf_folder):
    assert_same_logits(ours(hf_folder), reference)


def test_transformers_safetensors_file_gives_the_same_logits(reference, hf_folder):
    assert_same_logits(ours(hf_folder / "model.safetensors"), reference)


def test_sharded_transformers_folder_gives_the_same_logits(reference, tmp_path):
    reference.save_pretrained(tmp_path, max_shard_size="60KB")  # transformers writes shards and their index
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    assert_same_logits(ours(tmp_path), reference)


def test_missing_shard_is_named(reference, tmp_path):
    reference.save_pretrained(tmp_path, max_shard_size="60KB")
    shard = sorted(tmp_path.glob("*.safetensors"))[1]
    shard.unlink()
    check_error(tmp_path, f"{shard.name}: shard listed in the index is missing")


def test_fresh_model_does_not_match(reference):
    """The equality above is not vacuous: the same model without the checkpoint gives other logits."""
    clip = video()
    with torch.no_grad():
        assert (ours()(clip) - reference_logits(reference, clip)).abs().max() > 1e-2


def test_transformers_5_module_names_load(reference, tmp_path):
    """``query.bias`` / ``value.bias`` (transformers 5's in-memory names, e.g. a state_dict saved by hand)."""
    path = tmp_path / "state.pth"
    torch.save(reference.state_dict(), path)
    assert any(k.endswith("attention.query.bias") for k in reference.state_dict())
    assert_same_logits(ours(path), reference)


@pytest.mark.parametrize("key", ["model", "module"])
def test_released_layout_gives_the_same_logits(reference, tmp_path, key):
    path = tmp_path / "videomae.pth"
    torch.save({key: released_names(reference.state_dict())}, path)
    assert_same_logits(ours(path), reference)


def test_data_parallel_prefix_is_stripped(reference, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({"module": {"module." + k: v for k, v in released_names(reference.state_dict()).items()}}, path)
    assert_same_logits(ours(path), reference)


def test_transformers_config_with_another_activation_is_refused(hf_folder, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(hf_folder, tmp_path / "relu")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    check_error(folder, "hidden_act='relu'")


def test_released_key_bias_is_zero(released_file):
    """No key bias in the released Attention: the middle third of our fused qkv bias is 0, q and v are the file's."""
    state = torch.load(released_file, weights_only=True)["model"]
    bias = ours(released_file).blocks[1].attn.qkv.bias.detach()
    torch.testing.assert_close(bias[:DIM], state["blocks.1.attn.q_bias"], rtol=0, atol=0)
    assert torch.count_nonzero(bias[DIM : 2 * DIM]) == 0
    torch.testing.assert_close(bias[2 * DIM :], state["blocks.1.attn.v_bias"], rtol=0, atol=0)


def test_pretraining_checkpoint_loads_its_encoder(reference, tmp_path):
    """modeling_pretrain.py's layout: ``encoder.`` + its last norm, a decoder, encoder_to_decoder, mask_token."""
    encoder = {k: v for k, v in released_names(reference.state_dict()).items() if k.startswith(("patch_", "blocks"))}
    state = {"encoder." + k: v for k, v in encoder.items()}
    state |= {"encoder.norm.weight": torch.randn(DIM), "encoder.norm.bias": torch.randn(DIM)}
    state |= {
        "decoder.blocks.0.norm1.weight": torch.randn(32),
        "decoder.head.weight": torch.randn(1536, 32),
        "encoder_to_decoder.weight": torch.randn(32, DIM),
        "mask_token": torch.zeros(1, 1, 32),
    }
    path = tmp_path / "pretrain.pth"
    torch.save({"model": state}, path)
    fresh = ours()
    model = ours(path)
    for name, value in encoder.items():
        if ".attn.q_bias" not in name and ".attn.v_bias" not in name:
            torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    for name in ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"):  # not in the file: fresh init
        torch.testing.assert_close(model.state_dict()[name], fresh.state_dict()[name], rtol=0, atol=0)
    # the encoder computes what transformers' does; pooled and normed with our (fresh: unit) fc_norm
    clip = video()
    with torch.no_grad():
        tokens = reference.videomae(pixel_values=clip.transpose(1, 2)).last_hidden_state
        expected = F.layer_norm(tokens.mean(1), (DIM,), eps=1e-6)
        torch.testing.assert_close(model.forward_features(clip), expected, rtol=0, atol=1e-6)


def test_transformers_pretraining_model_loads_its_encoder(tmp_path):
    torch.manual_seed(3)
    config = hf_config(use_mean_pooling=False, decoder_hidden_size=32, decoder_num_hidden_layers=1)
    config.decoder_num_attention_heads, config.decoder_intermediate_size = 2, 64
    pretraining = transformers.VideoMAEForPreTraining(config)
    pretraining.save_pretrained(tmp_path / "pre")
    model = ours(tmp_path / "pre")
    want = pretraining.videomae.encoder.layer[1].intermediate.dense.weight
    torch.testing.assert_close(model.blocks[1].mlp.fc1.weight, want, rtol=0, atol=0)


def test_head_of_another_class_count_is_reinitialised(released_file, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("mmllm"), "propagate", True)
    fresh = ours(num_classes=7)
    with caplog.at_level(logging.INFO, logger="mmllm"):
        model = ours(released_file, num_classes=7)
    torch.testing.assert_close(model.head.weight, fresh.head.weight, rtol=0, atol=0)
    state = torch.load(released_file, weights_only=True)["model"]
    torch.testing.assert_close(model.fc_norm.weight, state["fc_norm.weight"], rtol=0, atol=0)
    assert any("head is re-initialised" in r.getMessage() for r in caplog.records)


def test_the_llm_block_is_left_alone(released_file):
    """With a real (random, frozen) LLM block the ViT tensors still load and the block keeps its weights."""
    tiny_llm = random_llama_block()
    fresh = ours(llm_block=tiny_llm)
    model = ours(released_file, llm_block=tiny_llm)
    state = torch.load(released_file, weights_only=True)["model"]
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"], rtol=0, atol=0)
    for (name, a), b in zip(model.llm_block.state_dict().items(), fresh.llm_block.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# ------------------------------------------------------------------ files that do not fit: the first key is named


def write_released(tmp_path, reference, edit):
    state = released_names(reference.state_dict())
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    return path


def check_error(path, match, **overrides):
    with pytest.raises(CheckpointError, match=match):
        ours(path, **overrides)


def test_wrong_shape_names_the_key(reference, tmp_path):
    def narrow(state):
        state["blocks.1.mlp.fc1.weight"] = state["blocks.1.mlp.fc1.weight"][:100]

    check_error(write_released(tmp_path, reference, narrow), r"blocks\.1\.mlp\.fc1\.weight has shape \[100, 64\]")


def test_wider_model_names_the_first_key(released_file):
    check_error(released_file, r"patch_embed\.proj\.weight has shape", embed_dim=96, num_heads=2)


def test_unknown_key_is_named(reference, tmp_path):
    def layer_scale(state):  # modeling_finetune.py's Block with init_values > 0: not our timm block
        state["blocks.0.gamma_1"] = torch.ones(DIM)

    check_error(write_released(tmp_path, reference, layer_scale), r"blocks\.0\.gamma_1 has no place")


def test_nan_or_inf_tensor_is_named(reference, tmp_path):
    def diverged(state):  # a save from a run that diverged: it fits by shape, every output would be NaN
        state["blocks.1.attn.v_bias"][3] = float("nan")
        state["blocks.0.mlp.fc2.weight"][0, 0] = float("inf")

    check_error(
        write_released(tmp_path, reference, diverged),
        r"tensor\(s\) \['blocks\.0\.mlp\.fc2\.weight', 'blocks\.1\.attn\.v_bias'\] hold NaN or inf",
    )


def test_deeper_checkpoint_names_the_extra_block(released_file):
    check_error(released_file, r"blocks\.1\.norm1\.weight has no place .*'blocks\.1\.norm1\.weight'", depth=1)


def test_shallower_checkpoint_names_the_missing_tensor(released_file):
    check_error(released_file, r"no tensor for blocks\.2\.norm1\.weight \(expected blocks\.2\.norm1\.weight\)", depth=3)


def test_missing_v_bias_is_named(reference, tmp_path):
    path = write_released(tmp_path, reference, lambda state: state.pop("blocks.1.attn.v_bias"))
    check_error(path, r"no tensor for blocks\.1\.attn\.qkv\.bias \(expected blocks\.1\.attn\.v_bias\)")


def test_missing_key_weight_in_transformers_layout_is_named(reference, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in reference.state_dict().items() if "layer.0.attention.attention.key" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    check_error(tmp_path / "model.safetensors", r"expected videomae\.encoder\.layer\.0\.attention\.attention\.key")


def test_learned_position_table_needs_a_learned_model(reference, tmp_path):
    path = write_released(tmp_path, reference, lambda s: s.update(pos_embed=torch.zeros(1, 8, DIM)))
    check_error(path, r"pos_embed has no place")
    model = ours(path, pos_embed="learned")
    assert torch.count_nonzero(model.pos_embed) == 0


def timm_resampled(table: torch.Tensor, slots: int, old: int, new: int) -> torch.Tensor:
    """The independent reference: timm's ``resample_abs_pos_embed`` on each temporal slot's s x s grid, bicubic,
    no antialiasing (run_class_finetuning.py calls F.interpolate(mode='bicubic', align_corners=False))."""
    from timm.layers import resample_abs_pos_embed

    per_slot = table.reshape(slots, old * old, table.shape[-1])
    out = [
        resample_abs_pos_embed(s[None], [new, new], [old, old], num_prefix_tokens=0, antialias=False) for s in per_slot
    ]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("old", [4, 1])  # a file fine-tuned at 64 px (4 x 4 patches) or 16 px, loaded at 32 px
def test_learned_position_table_of_another_grid_is_resampled(reference, tmp_path, old):
    table = torch.randn(1, 2 * old * old, DIM, generator=torch.Generator().manual_seed(3))
    path = write_released(tmp_path, reference, lambda s: s.update(pos_embed=table))
    model = ours(path, pos_embed="learned")  # 32 px, patch 16, 4 frames, tubelet 2: 2 slots of 2 x 2
    torch.testing.assert_close(model.pos_embed.detach(), timm_resampled(table, 2, old, 2), rtol=0, atol=1e-6)
    assert not torch.equal(model.pos_embed.detach()[:, :4], model.pos_embed.detach()[:, 4:])  # slots kept apart


def test_position_table_of_other_temporal_slots_is_refused(reference, tmp_path):
    table = torch.randn(1, 3 * 4 * 4, DIM)  # 3 temporal slots of 4 x 4; the model has 2
    path = write_released(tmp_path, reference, lambda s: s.update(pos_embed=table))
    check_error(path, r"pos_embed has shape \[1, 48, 64\], not \[1, 2 x s x s, D\]", pos_embed="learned")


def test_first_token_classifier_is_refused(reference, tmp_path):
    def cls_pooling(state):  # --use_cls: norm before the head, no fc_norm
        state["norm.weight"], state["norm.bias"] = state.pop("fc_norm.weight"), state.pop("fc_norm.bias")

    check_error(write_released(tmp_path, reference, cls_pooling), r"norm\.weight is the norm of a classifier")


def test_non_tensor_and_missing_files(tmp_path):
    torch.save({"model": {"patch_embed.proj.weight": [1, 2]}}, tmp_path / "list.pth")
    check_error(tmp_path / "list.pth", r"patch_embed\.proj\.weight is a list, not a tensor")
    check_error(tmp_path / "absent.pth", "does not exist")
    (tmp_path / "empty").mkdir()
    check_error(tmp_path / "empty", "empty: no weights found")
    import datetime

    torch.save({"model": {"when": datetime.date(2020, 1, 1)}}, tmp_path / "pickled.pth")
    check_error(tmp_path / "pickled.pth", "refused to unpickle")


def test_loader_returns_the_source_of_each_tensor(released_file):
    model = ours()
    loaded = load_videomae_checkpoint(model, released_file)
    assert loaded["blocks.0.attn.qkv.bias"] == "blocks.0.attn.q_bias + blocks.0.attn.v_bias"
    assert loaded["head.weight"] == "head.weight"
    assert set(loaded) == set(model.state_dict())


def test_train_from_a_released_checkpoint_with_layer_decay(released_file, tmp_path):
    """``model.checkpoint`` and ``run.layer_decay`` through ``mmllm train``: the file is loaded (log line) and
    the logged LR (the first group's: the tubelet embedding, layer 0 of 2) is init_lr * 0.75 ** 3."""
    import json
    import os
    import subprocess
    import sys

    import yaml
    from conftest import ROOT

    from vision.action import clips

    root = clips.generate(tmp_path / "clips", clips.ClipSettings(train=4, val=2, test=2, seed=2))
    split = {"annotation": str(root / "train.json"), "video_root": str(root / "videos")}
    cfg = {
        "model": {
            "num_classes": 10,  # the file's head has 5: re-initialised
            "img_size": 32,
            "num_frames": 8,  # the file holds no position table (sinusoid): any clip length loads
            "patch_size": 16,
            "tubelet_size": 2,
            "embed_dim": DIM,
            "depth": DEPTH,
            "num_heads": 2,
            "llm_block": {"kind": "none"},
            "checkpoint": str(released_file),
        },
        "datasets": {
            "mmllm_action": {
                "labels": str(root / "labels.json"),
                "video_ext": "mp4",
                "num_frames": 8,
                "input_size": 32,
                "splits": {"train": split},
            }
        },
        "run": {
            "task": "mmllm_action",
            "output_dir": str(tmp_path / "run"),
            "max_steps": 1,
            "batch_size_train": 4,
            "precision": "fp32",
            "log_every": 1,
            "init_lr": 1e-3,
            "lr_sched": "constant",
            "warmup_steps": 0,
            "layer_decay": 0.75,
            "evaluate_val": False,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "train", "--config", str(tmp_path / "cfg.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensors of a released VideoMAE checkpoint loaded" in proc.stderr
    assert "the head is re-initialised" in proc.stderr
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logged if m.get("split") == "train"]
    assert train[0]["lr"] == pytest.approx(1e-3 * 0.75**3)
