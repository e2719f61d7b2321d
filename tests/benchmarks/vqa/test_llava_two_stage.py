"""LLaVA's two stages (Liu et al., NeurIPS 2023; haotian-liu/LLaVA): captions written from easy-VQA's labels,
LLaVA's visual features (penultimate layer, patch tokens only), stage 1 on captions with the projector (+ LLaViT's
visual Q/K/V) alone trained and the caption-only loss, stage 2 from stage 1's weights with the LLM tuned, and the
stages file that runs both with one command.

Every expected value is built independently of the code under test: hand-written strings, the encoders' layers
run by hand, labels laid out by hand, weights compared with torch.equal.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from tiny_llms import tiny_model
from torch.nn import functional as F

from mmllm.errors import ConfigError, DataError
from mmllm.models.llava import PromptFormat, VisualPrefixLM


# ---------------------------------------------------------------------- captions from labels
def test_caption_written_from_a_known_label():
    from mmllm_vqa.easy_vqa_captions import ImageLabel, caption_from_label, image_labels

    assert caption_from_label(ImageLabel("circle", "red")) == "a red circle"
    assert caption_from_label(ImageLabel("triangle")) == "a triangle"
    # easy-VQA's image 0 (train): its label is only in its QA pairs, open and yes/no alike
    qa = [
        ("what is the blue shape?", "rectangle"),
        ("is there a triangle in the image?", "no"),
        ("is there not a blue shape?", "no"),
    ]
    labels = image_labels([q for q, _ in qa], [a for _, a in qa], [0, 0, 0])
    assert caption_from_label(labels[0]) == "a blue rectangle"
    yes_no_only = image_labels(
        ["does the image not contain a green shape?", "is a circle present?"], ["no", "yes"], [7, 7]
    )
    assert caption_from_label(yes_no_only[7]) == "a green circle"
    with pytest.raises(DataError, match="colour"):
        image_labels(["what color is the shape?", "is there a red shape?"], ["blue", "yes"], [1, 1])
    with pytest.raises(DataError):
        caption_from_label(ImageLabel("hexagon", "red"))


def test_caption_exact_match_is_strict_after_case_space_and_period():
    from mmllm_vqa.caption_benchmark import exact_match

    assert exact_match(" A  Red circle.", ["a red circle"]) and exact_match("a circle", ["x", "a circle"])
    assert not exact_match("a red", ["a red circle"]) and not exact_match("red circle", ["a red circle"])


# ---------------------------------------------------------------------- features as LLaVA takes them
def _vit_encoder(layers=3):
    from mmllm.models.encoders import VisionOptions, build_vision_encoder

    torch.manual_seed(0)
    opts = VisionOptions.parse(
        {"vit": {"image_size": 32, "patch_size": 8, "width": 16, "layers": layers, "heads": 2}}, "v"
    )
    return build_vision_encoder(opts).eval()


def test_vit_penultimate_patches_are_the_second_to_last_block_without_cls():
    from mmllm_vqa.generative_model import MultiDepthVision

    enc = _vit_encoder()
    visual = enc.visual
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # by hand: patch embedding, CLS, positions, ln_pre, then every block but the last; no ln_post
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(2, 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
        if not visual.transformer.batch_first:
            x = x.transpose(0, 1)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        if not visual.transformer.batch_first:
            x = x.transpose(0, 1)
        expected = x[:, 1:]
        got = MultiDepthVision(enc, None, "penultimate_patch")(images)
        assert got.shape == (2, 16, 16)  # 4x4 patches, no CLS token
        torch.testing.assert_close(got, expected)
        # today's behaviour, kept as final_all: the encoder's own output (CLS first, after ln_post)
        torch.testing.assert_close(MultiDepthVision(enc, None, "final_all")(images), enc(images))
        # with LLaViT's depths the layers are the listed ones; penultimate_patch drops each depth's CLS
        both = MultiDepthVision(enc, [0, -1], "final_all")(images)
        torch.testing.assert_close(MultiDepthVision(enc, [0, -1], "penultimate_patch")(images), both[:, 1:])
    with pytest.raises(ConfigError, match="2 blocks"):
        MultiDepthVision(_vit_encoder(layers=1), None, "penultimate_patch")
    # a trained ViT: what the features never run (last block, ln_post) is frozen, the rest trains and gets gradients
    vision = MultiDepthVision(enc, None, "penultimate_patch")
    frozen = vision.freeze_unused()
    assert frozen and all(
        n.startswith(("encoder.visual.transformer.resblocks.2.", "encoder.visual.ln_post.")) for n in frozen
    )
    vision(images).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in vision.parameters())


def test_cnn_penultimate_patches_are_the_last_stage_before_the_head():
    from mmllm.models.cnn_encoder import CNNOptions, CNNVisionEncoder
    from mmllm_vqa.generative_model import MultiDepthVision

    torch.manual_seed(0)
    enc = CNNVisionEncoder(CNNOptions(weights=None, image_size=64))
    enc.set_trainable(False)
    images = torch.randn(2, 3, 64, 64)
    net = enc.net
    with torch.no_grad():
        (timm_map,) = net.forward_intermediates(images, indices=[-1], intermediates_only=True)  # timm's own
        by_hand = net.blocks(net.bn1(net.conv_stem(images)))  # every stage, conv_head and bn2 not run
        vision = MultiDepthVision(enc, None, "penultimate_patch")
        got = vision(images)
    assert torch.equal(timm_map, by_hand) and by_hand.shape == (2, 320, 2, 2)
    assert got.shape == (2, 4, 320) and vision.out_dim == 320  # the 2x2 grid only: no pooled token
    torch.testing.assert_close(got, by_hand.flatten(2).transpose(1, 2))
    assert MultiDepthVision(enc, None, "final_all")(images).shape == (2, 5, 1280)  # pooled + grid, after the head


def test_feature_select_defaults():
    from mmllm_vqa.generative_model import GenerativeVQAOptions
    from mmllm_vqa.vlap_task import VLAPVQAOptions

    assert GenerativeVQAOptions.parse({}, "model").feature_select == "penultimate_patch"  # LLaVA's, the paper's
    assert VLAPVQAOptions.parse({}, "model").feature_select == "final_all"  # VLAP's runs keep theirs
    with pytest.raises(ConfigError, match="feature_select"):
        GenerativeVQAOptions.parse({"feature_select": "penultimate"}, "model")


# ---------------------------------------------------------------------- stage 1
@pytest.fixture(scope="module")
def smollm_tokenizer():
    from mmllm.models.llava import load_tokenizer

    return load_tokenizer("smollm2-135m")


def test_stage1_loss_is_on_caption_tokens_only(smollm_tokenizer):
    tok = smollm_tokenizer
    fmt = PromptFormat(tok, "caption")
    assert fmt.prefix_ids == [] and fmt.prompt_ids("ignored question") == []
    torch.manual_seed(0)
    lm = tiny_model("llama", vocab_size=len(tok))
    model = VisualPrefixLM(lm, 8, "linear", fmt.prefix_ids, fmt.pad_id, fmt.eos_ids)
    captions = ["a red circle", "a blue rectangle"]
    rows = [tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in captions]  # by hand
    p_ids, p_mask = fmt.batch_prompts(["", ""])
    a_ids, a_mask = fmt.batch_answers(captions)
    visual = torch.randn(2, 3, 8)
    inputs = model.assemble(visual, p_ids, p_mask, a_ids, a_mask)
    width = 3 + max(len(r) for r in rows)
    hand = [[-100] * (width - len(r)) + r for r in rows]  # padding and the 3 image tokens masked, caption + EOS kept
    assert inputs["labels"].tolist() == hand
    loss = model(visual, p_ids, p_mask, a_ids, a_mask)
    terms = []
    for i, r in enumerate(rows):  # each sample alone: [image tokens][caption + EOS], CE on the caption part
        emb = torch.cat([model.projector(visual[i]), lm.get_input_embeddings()(torch.tensor(r))])
        logits = lm(inputs_embeds=emb.unsqueeze(0)).logits[0]
        terms.append(F.cross_entropy(logits[2:-1], torch.tensor(r), reduction="sum"))
    torch.testing.assert_close(loss, sum(terms) / sum(len(r) for r in rows), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("llavit", [False, True])
def test_stage1_trains_projector_and_visual_qkv_only(llavit, smollm_tokenizer):
    from mmllm_vqa.generative_model import GenerativeVQAOptions, create_generative_vqa_model

    opts = GenerativeVQAOptions.parse(
        {
            "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 16, "layers": 2, "heads": 2}},
            "train_vision": False,
            "llm": {"train": "frozen"},
            "llavit": {"visual_qkv": llavit},
        },
        "model",
    )
    fmt = PromptFormat(smollm_tokenizer, "caption")
    torch.manual_seed(0)
    model = create_generative_vqa_model(opts, fmt, lm=tiny_model("llama", vocab_size=len(smollm_tokenizer)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.startswith("lm.projector.")}
    if llavit:
        expected |= {n for n, _ in model.named_parameters() if ".visual." in n and n.startswith("lm.lm.")}
    assert trainable == expected and any(".visual." in n for n in trainable) == llavit
    llm_before = {n: p.detach().clone() for n, p in model.lm.lm.named_parameters() if f"lm.lm.{n}" not in trainable}
    assert len(llm_before) == len(list(tiny_model("llama").parameters()))  # every weight of the LLM itself
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    a_ids, a_mask = fmt.batch_answers(["a red circle", "a teal triangle"])
    model.train()
    model(torch.randn(2, 3, 32, 32), *fmt.batch_prompts(["", ""]), a_ids, a_mask).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    projector_before = [p.detach().clone() for p in model.lm.projector.parameters()]
    optimizer.step()
    assert all(torch.equal(p, llm_before[n]) for n, p in model.lm.lm.named_parameters() if n in llm_before)
    if llavit:  # the visual copies moved with the projector
        assert any(
            not torch.equal(p, llm_before[n.replace(".visual.", ".text.")])
            for n, p in model.lm.lm.named_parameters()
            if ".visual." in n
        )
    assert not all(torch.equal(a, b) for a, b in zip(projector_before, model.lm.projector.parameters()))


def test_stage1_refuses_a_trained_llm():
    from mmllm.config import load_config
    from mmllm.engine.launch import task_for

    with pytest.raises(ConfigError, match="stage 1"):
        task_for(load_config(ROOT / "configs/vqa/easyvqa_llava_stage1.yaml", ["model.llm.train=full"]))


# ---------------------------------------------------------------------- the shipped files
def test_shipped_stage_configs_validate():
    from mmllm.engine.launch import task_for
    from mmllm.engine.stages import load_stages

    stages = load_stages(
        ROOT / "configs/vqa/easyvqa_llava_two_stage.yaml", ["run.output_dir=/tmp/two", "stage2:run.seed=3"]
    )
    one, two = (task_for(s.cfg) for s in stages)
    assert one.entry.name == "mmllm_captioning_llava" and two.entry.name == "mmllm_vqa_generative"
    assert (one.run.output_dir, two.run.output_dir) == ("/tmp/two/stage1", "/tmp/two")
    assert two.run.init_from == "/tmp/two/stage1/model_final.pt" and (one.run.seed, two.run.seed) == (42, 3)
    assert one.model_cfg.llm.train == "frozen" and two.model_cfg.llm.train == "full"
    assert (one.run.init_lr, two.run.init_lr) == (1e-3, 2e-5)  # LLaVA-1.5's pretrain.sh / finetune.sh
    assert one.model_cfg.model_dump(exclude={"arch", "llm", "max_new_tokens"}) == two.model_cfg.model_dump(
        exclude={"arch", "llm", "max_new_tokens"}
    )  # the same model in both stages, so stage 2 loads stage 1's weights by name
    with pytest.raises(ConfigError, match="no stage"):
        load_stages(ROOT / "configs/vqa/easyvqa_llava_two_stage.yaml", ["stage3:run.seed=1"])


def test_config_show_prints_each_stage_as_it_will_run(capsys):
    from mmllm.cli import main

    path = ROOT / "configs/vqa/easyvqa_llava_two_stage.yaml"
    assert main(["config", "--show", str(path), "--options", "run.output_dir=/tmp/two", "stage2:run.seed=3"]) == 0
    text = capsys.readouterr().out
    one, two = yaml.safe_load_all(text)
    assert text.startswith("# stage stage1: /tmp/two/stage1\n") and "# stage stage2: /tmp/two\n" in text
    assert (one["run"]["output_dir"], two["run"]["output_dir"]) == ("/tmp/two/stage1", "/tmp/two")
    assert one["run"].get("init_from") is None and two["run"]["init_from"] == "/tmp/two/stage1/model_final.pt"
    assert (one["run"]["seed"], two["run"]["seed"]) == (42, 3)  # a stage's own option reaches that stage only
    assert one["run"]["warmup_ratio"] is not None  # defaults filled in, as for a plain config
    # where one task config is read (the LAVIS entry point, create_model_and_transforms), a stages file is named
    from mmllm.config import load_config

    with pytest.raises(ConfigError, match="is a stages file.*mmllm train --config"):
        load_config(path)


def test_related_sweep_runs_llava_and_llavit_in_two_stages():
    from mmllm.sweep import expand, load_sweep

    runs = expand(load_sweep(ROOT / "configs/sweeps/related.yaml"), "/tmp/related_runs")
    two_stage = [r for r in runs if r.config.endswith("easyvqa_llava_two_stage.yaml")]
    assert {r.variant for r in two_stage} >= {"llava_2stage", "llavit_2stage"} and {r.seed for r in two_stage} == {
        1,
        2,
        3,
    }


# ---------------------------------------------------------------------- one command, both stages
def _tiny_lm_folder(folder, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def _write_stages(tmp_path, tokenizer):
    from tiny_vqa import write_images_and_qa

    data = write_images_and_qa(tmp_path / "data", n_images=6)
    lm_dir = _tiny_lm_folder(tmp_path / "lm", tokenizer)
    model = {
        "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "heads": 2}},
        "train_vision": False,
        "llm": {"source": str(lm_dir), "dtype": "fp32", "prompt": "plain", "projector": "linear"},
        "llavit": {"visual_qkv": True},
        "max_new_tokens": 3,
    }
    run = {
        "deepspeed_config": str(ROOT / "configs/deepspeed/zero0.json"),
        "precision": "fp32",
        "seed": 0,
        "max_steps": 2,
        "max_epoch": 5,
        "batch_size_train": 4,
        "batch_size_eval": 4,
        "log_every": 1,
        "num_workers": 0,
        "checkpoint_every": 0,
    }
    captions = {"image_root": str(data / "images")}
    stage1 = {
        "model": {**model, "arch": "llava"},
        "datasets": {
            "mmllm_captioning": {
                "splits": {
                    "train": {**captions, "annotation": str(data / "captions_train.json")},
                    "test": {**captions, "annotation": str(data / "captions_val.json")},
                }
            }
        },
        "run": {**run, "task": "mmllm_captioning_llava", "output_dir": "unused", "init_lr": 1e-2},
    }
    vqa = {"questions": str(data / "questions.json"), "annotations": str(data / "annotations.json")}
    stage2 = {
        "model": {**model, "arch": "llava_vqa", "llm": {**model["llm"], "train": "full"}},
        "datasets": {
            "mmllm_vqa": {
                "image_pattern": "{image_id}.png",
                "image_root": str(data / "images"),
                "eval_limit": 6,
                "splits": {"train": vqa, "test": vqa},
            }
        },
        "run": {**run, "task": "mmllm_vqa_generative", "output_dir": str(tmp_path / "run"), "init_lr": 1e-3},
    }
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(stage1))
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    stages = {
        "stages": [
            {"name": "stage1", "config": "stage1.yaml"},
            {
                "name": "stage2",
                "config": "stage2.yaml",
                "init_from": "stage1",
                "init_prefixes": ["lm.projector.", "lm.lm.*.visual.*"],
            },
        ]
    }
    path = tmp_path / "two_stage.yaml"
    path.write_text(yaml.safe_dump(stages))
    return path


def _mmllm_train(path, *options):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "mmllm.cli", "train", "--config", str(path)]
    if options:
        command += ["--options", *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_one_command_runs_both_stages(tmp_path, smollm_tokenizer):
    from omegaconf import OmegaConf

    from mmllm.engine.launch import task_for
    from mmllm.engine.stages import load_stages
    from mmllm.engine.trainer import build_model
    from mmllm.model_file import read_model_file

    path = _write_stages(tmp_path, smollm_tokenizer)
    done = _mmllm_train(path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = tmp_path / "run/stage1", tmp_path / "run"
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["steps"] == 2 and "test_exact_match" in s1 and s2["steps"] == 2 and "test_accuracy" in s2
    captions = json.loads((one / "captions_test.json").read_text())
    assert len(captions) == 6 and all(isinstance(c["caption"], str) for c in captions)
    first = read_model_file(one / "model_final.pt")["state_dict"]
    # stage 1 saved what it trained: the projector and the visual Q/K/V copies, no text LLM weight
    assert any(k.startswith("lm.projector.") for k in first)
    assert {k for k in first if k.startswith("lm.lm.")} and all(
        ".visual." in k for k in first if k.startswith("lm.lm.")
    )

    # stage 2 is built from stage 1's weights exactly: the trainer's own model building, before any step
    stage2 = load_stages(path)[-1]
    task = task_for(OmegaConf.create(OmegaConf.to_container(stage2.cfg)))
    task.build_preprocess()
    model = build_model(task)
    state = model.state_dict()
    trained = [k for k in first if k.startswith("lm.")]
    assert trained and all(torch.equal(state[k].float(), first[k]) for k in trained)
    assert all(p.requires_grad for p in model.lm.lm.parameters())  # the LLM is tuned in stage 2
    # after stage 2 the LLM moved (its whole state is saved: nothing of it is frozen)
    second = read_model_file(two / "model_final.pt")["state_dict"]
    text_keys = [k for k in second if k.startswith("lm.lm.") and ".visual." not in k]
    assert text_keys and any(not torch.equal(second[k], state[k].float()) for k in text_keys)

    # the sweep sees a stages run as done when every stage is
    from mmllm.sweep import SweepRun, run_state

    swept = SweepRun("mmllm_vqa_generative", "llava_2stage", None, 0, str(path), (), two)
    assert run_state(swept) == ("done", [])

    # the same command again: both stages finished, nothing retrained
    stamp = (two / "summary.json").stat().st_mtime_ns, (one / "summary.json").stat().st_mtime_ns
    again = _mmllm_train(path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ((two / "summary.json").stat().st_mtime_ns, (one / "summary.json").stat().st_mtime_ns) == stamp
    # stage 1 from a different config in its folder: refused, stage 2 untouched
    refused = _mmllm_train(path, "stage1:run.init_lr=0.5")
    assert refused.returncode != 0 and "different settings" in refused.stderr
    # stage 1 trained anew: the finished stage 2 started from the old one, so it is refused, not reported
    retrained = _mmllm_train(path, "stage1:run.overwrite=true", "stage1:run.init_lr=0.05")
    assert retrained.returncode != 0 and "trained again" in retrained.stderr
    assert (two / "summary.json").stat().st_mtime_ns == stamp[0]
    state, why = run_state(swept)  # stage 1's folder now holds a run of other settings
    assert state == "different" and any(w.startswith("stage stage1: run.init_lr") for w in why)
