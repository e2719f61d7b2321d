"""LLaVA-style generative path: layout, answer-only loss, greedy generation with EOS/limit, the
official normalisation of generated answers, and one short run through the shared engine.

Tiny random LLaMA models (transformers' own class), never the real asset's weights; the real
SmolLM2 tokenizer (built by transformers from the asset's GGUF file) where a tokenizer is needed.
"""

import json

import pytest
import torch
from conftest import ROOT
from tiny_llms import tiny_model
from torch.nn import functional as F

from mmllm.models.llava import PromptFormat, VisualPrefixLM, build_projector

ROOT_CONFIG = ROOT / "configs/vqa/easyvqa_llava_smollm2.yaml"

PREFIX, PAD, EOS = [5, 6], 0, 3


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    lm = tiny_model("llama", seed=seed)
    return VisualPrefixLM(lm, visual_dim=8, projector="mlp2", prefix_ids=PREFIX, pad_id=PAD, eos_ids=[EOS], **kwargs)


def batch(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def reference_logits(model, visual_row, prompt, answer=()):
    """One unpadded sample, assembled by hand: [prefix][projected visual][prompt][answer] through the LM."""
    emb = model.lm.get_input_embeddings()
    parts = [emb(torch.tensor(PREFIX)), model.projector(visual_row), emb(torch.tensor(list(prompt) + list(answer)))]
    return model.lm(inputs_embeds=torch.cat(parts).unsqueeze(0)).logits[0]


def greedy_reference(model, visual_row, prompt, limit, eos):
    """Greedy decoding by full recomputation (no cache, no padding, batch of one)."""
    out = []
    for _ in range(limit):
        token = int(reference_logits(model, visual_row, list(prompt) + out)[-1].argmax())
        if token in eos:
            break
        out.append(token)
    return out


def test_layout_left_padded_with_visual_tokens_in_place():
    model = make_model()
    visual = torch.randn(2, 3, 8)
    p_ids, p_mask = batch([[7, 8, 9], [10]])
    a_ids, a_mask = batch([[12, EOS], [13, 14, EOS]])
    inp = model.assemble(visual, p_ids, p_mask, a_ids, a_mask)
    # row 0: [5, 6, v, v, v, 7, 8, 9, 12, EOS]; row 1: [pad, 5, 6, v, v, v, 10, 13, 14, EOS]
    assert inp["attention_mask"].tolist() == [[1] * 10, [0] + [1] * 9]
    assert inp["modality_ids"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]]
    assert inp["labels"].tolist() == [[-100] * 8 + [12, EOS], [-100] * 7 + [13, 14, EOS]]
    assert inp["position_ids"].tolist() == [list(range(10)), [0] + list(range(9))]
    torch.testing.assert_close(inp["inputs_embeds"][0, 2:5], model.projector(visual[0]))
    torch.testing.assert_close(inp["inputs_embeds"][1, 3:6], model.projector(visual[1]))
    torch.testing.assert_close(inp["inputs_embeds"][1, 6], model.lm.get_input_embeddings().weight[10])


def test_loss_is_cross_entropy_on_answer_tokens_only():
    model = make_model()
    visual = torch.randn(2, 3, 8)
    prompts, answers = [[7, 8, 9], [10]], [[12, EOS], [13, 14, EOS]]
    loss = model(visual, *batch(prompts), *batch(answers))
    terms = []
    for i in range(2):  # independent reference: each sample alone, unpadded
        logits = reference_logits(model, visual[i], prompts[i], answers[i])
        n = len(answers[i])
        terms.append(F.cross_entropy(logits[-n - 1 : -1], torch.tensor(answers[i]), reduction="sum"))
    torch.testing.assert_close(loss, sum(terms) / 5, rtol=1e-5, atol=1e-5)


def test_stage1_trains_projector_only():
    model = make_model()
    model.freeze_lm()
    model.train()
    assert not model.lm.training  # a frozen LM stays in eval mode
    loss = model(torch.randn(2, 3, 8), *batch([[7], [8, 9]]), *batch([[12, EOS], [EOS]]))
    loss.backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    keys = set(model.frozen_state_keys())
    assert "lm.lm_head.weight" in keys and "lm.model.embed_tokens.weight" in keys  # tied head left out too
    assert not any(k.startswith("projector.") for k in keys)


def test_projectors():
    assert isinstance(build_projector("linear", 8, 16), torch.nn.Linear)
    mlp = build_projector("mlp2", 8, 16)
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Linear"]
    from mmllm.errors import ConfigError

    with pytest.raises(ConfigError):
        build_projector("none", 8, 16)
    with pytest.raises(ConfigError):
        build_projector("mlp3", 8, 16)


@torch.no_grad()
def test_generation_stops_at_eos_or_limit():
    model = make_model(seed=1).eval()
    visual = torch.randn(3, 3, 8)
    prompts = [[7, 8, 9], [10], [11, 12]]
    limit = 6
    free = [greedy_reference(model, visual[i], prompts[i], limit, eos=()) for i in range(3)]
    # an EOS that sample 0 produces at step k (first occurrence): it must stop right there
    k = next(k for k in range(1, limit) if free[0][k] not in free[0][:k])
    eos = free[0][k]
    got = model.generate(visual, *batch(prompts), max_new_tokens=limit, eos_ids=[eos])
    assert got[0] == free[0][:k]
    for i in range(3):
        expect = greedy_reference(model, visual[i], prompts[i], limit, eos=(eos,))
        assert got[i] == expect and len(got[i]) <= limit
    # no EOS ever produced: every row runs to the limit exactly
    never = [t for t in range(64) if all(t not in f for f in free)][0]
    got = model.generate(visual, *batch(prompts), max_new_tokens=limit, eos_ids=[never])
    assert got == free and all(len(g) == limit for g in got)
    assert model.generate(visual, *batch(prompts), max_new_tokens=1, eos_ids=[never]) == [f[:1] for f in free]


@pytest.fixture(scope="module")
def smollm_tokenizer():
    from mmllm.models.llava import load_tokenizer

    return load_tokenizer("smollm2-135m")


def test_chat_prompt_matches_the_template(smollm_tokenizer):
    tok = smollm_tokenizer
    fmt = PromptFormat(tok, "auto")
    assert fmt.mode == "chat" and fmt.eos_ids == (tok.convert_tokens_to_ids("<|im_end|>"),)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat shape is it?"}], tokenize=False, add_generation_prompt=True
    )
    before, after = text.split("<image>")
    assert tok.decode(fmt.prefix_ids) == before and tok.decode(fmt.prompt_ids("what shape is it?")) == after
    assert after.endswith("<|im_start|>assistant\n")
    ids = fmt.answer_ids("circle")
    assert ids[-1] == fmt.eos_ids[0] and fmt.decode([ids[:-1]]) == ["circle"]
    plain = PromptFormat(tok, "plain")
    assert plain.prefix_ids == [] and tok.decode(plain.prompt_ids("what shape?")) == "Question: what shape? Answer:"
    assert plain.decode([plain.answer_ids("red")]) == ["red"]  # EOS skipped when decoding


def test_generated_answers_get_the_official_normalisation(tmp_path):
    from mmllm_vqa import metrics
    from mmllm_vqa.data import load_split
    from mmllm_vqa.generative_task import training_answer

    def ann(qid, answers):
        return {
            "question_id": qid,
            "image_id": 0,
            "question_type": "how many",
            "answer_type": "number",
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        }

    anns = [ann(1, ["2"] * 10), ann(2, ["circle"] * 10), ann(3, ["red"] * 2 + ["blue"] * 8), ann(4, ["yes"] * 10)]
    (tmp_path / "q.json").write_text(
        json.dumps({"questions": [{"question_id": a["question_id"], "image_id": 0, "question": "?"} for a in anns]})
    )
    (tmp_path / "a.json").write_text(json.dumps({"annotations": anns}))
    split = load_split("test", tmp_path / "q.json", tmp_path / "a.json", tmp_path, "{image_id}.png", check_images=False)
    # raw generated text: number word + period, article + capital, a minority answer, a wrong one
    raw = {1: "Two.", 2: "The Circle", 3: "red", 4: "no"}
    # the VQA benchmark's scorer hands the raw text to the official evaluator, which normalises it itself
    acc = metrics.evaluate([split.annotations[q] for q in sorted(raw)], raw)
    # hand-computed: 1, 1, red has 2 of 10 votes -> mean over leave-one-out of min(1, matches/3):
    # 2 subsets drop a red (1 match -> 1/3), 8 drop a blue (2 matches -> 2/3): (2/3 + 16/3) / 10 = 0.6; 0
    assert acc["overall"] == round(100 * (1 + 1 + 0.6 + 0) / 4, 2)
    assert metrics.normalize_answer("Two.") == "2" and metrics.normalize_answer("The Circle") == "circle"
    assert training_answer(anns[2]) == "blue" and training_answer(ann(9, ["Two", "2", "two."])) == "2"


def _tiny_lm_folder(folder, tokenizer):
    """A tiny random LLaMA with the real tokenizer's vocabulary, saved as a local HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def test_trains_and_evaluates_through_the_engine(tmp_path, smollm_tokenizer):
    import os
    import subprocess
    import sys

    import yaml
    from conftest import ROOT
    from tiny_vqa import write_images_and_qa

    from mmllm.model_file import read_model_file

    data = write_images_and_qa(tmp_path / "data", n_images=6)
    lm_dir = _tiny_lm_folder(tmp_path / "lm", smollm_tokenizer)
    split = {
        "questions": str(data / "questions.json"),
        "annotations": str(data / "annotations.json"),
        "image_root": str(data / "images"),
    }
    cfg = {
        "model": {
            "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "heads": 2}},
            "llm": {"source": str(lm_dir), "dtype": "fp32", "prompt": "plain", "projector": "linear"},
            "max_new_tokens": 3,
        },
        "datasets": {
            "mmllm_vqa": {
                "image_pattern": "{image_id}.png",
                "eval_limit": 10,
                "splits": {"train": split, "test": split},
            }
        },
        "run": {
            "task": "mmllm_vqa_generative",
            "output_dir": str(tmp_path / "run"),
            "deepspeed_config": str(ROOT / "configs/deepspeed/zero0.json"),
            "precision": "fp32",
            "seed": 0,
            "max_epoch": 1,
            "max_steps": 3,
            "batch_size_train": 4,
            "batch_size_eval": 4,
            "init_lr": 1e-3,
            "log_every": 1,
            "num_workers": 0,
        },
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    }
    env["DS_ACCELERATOR"] = "cpu"
    subprocess.run(
        [sys.executable, str(ROOT / "projects/vqa/train.py"), "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["steps"] == 3 and summary["test_questions"] == 10.0 and 0.0 <= summary["test_accuracy"] <= 100.0
    answers = json.loads((tmp_path / "run/results_test.json").read_text())
    assert len(answers) == 10 and all(isinstance(a["answer"], str) for a in answers)
    state = read_model_file(tmp_path / "run/model_final.pt")["state_dict"]
    # the projector and encoder are saved; the frozen LM (tied head included) is reloaded from its source
    assert any(k.startswith("lm.projector.") for k in state) and not any(k.startswith("lm.lm.") for k in state)


def _tiny_lm(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )


@pytest.mark.parametrize("mode", ["frozen", "full", "lora"])
def test_stage_options_choose_what_trains(mode, smollm_tokenizer):
    if mode == "lora":
        pytest.importorskip("peft")
    from mmllm_vqa.generative_model import GenerativeVQAOptions, build_prompt_format, create_generative_vqa_model

    opts = GenerativeVQAOptions.parse(
        {
            "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 16, "layers": 2, "heads": 2}},
            "llm": {"train": mode, "prompt": "plain"},
        },
        "model",
    )
    fmt = build_prompt_format(opts, smollm_tokenizer)
    model = create_generative_vqa_model(opts, fmt, lm=_tiny_lm(smollm_tokenizer))
    lm_trainable = [n for n, p in model.lm.lm.named_parameters() if p.requires_grad]
    frozen = model.lm.frozen_state_keys()
    if mode == "frozen":
        assert lm_trainable == [] and "lm.model.embed_tokens.weight" in frozen
    elif mode == "full":
        assert len(lm_trainable) == len(list(model.lm.lm.parameters())) and frozen == []
    else:
        assert lm_trainable and all("lora_" in n for n in lm_trainable)
        assert not any("lora_" in k for k in frozen) and any(k.endswith("q_proj.base_layer.weight") for k in frozen)
    assert all(p.requires_grad for p in model.lm.projector.parameters())
    p_ids, p_mask = fmt.batch_prompts(["what color is it?", "is it red?"])
    a_ids, a_mask = fmt.batch_answers(["red", "no"])
    model.train()
    model(torch.randn(2, 3, 32, 32), p_ids, p_mask, a_ids, a_mask).backward()
    assert all(p.grad is not None for n, p in model.lm.lm.named_parameters() if n in lm_trainable)
    assert len(model.generate(torch.randn(2, 3, 32, 32), p_ids, p_mask, 2)) == 2


def test_lora_with_visual_qkv_is_refused(smollm_tokenizer):
    from mmllm.errors import ConfigError
    from mmllm_vqa.generative_model import GenerativeVQAOptions, build_prompt_format, create_generative_vqa_model

    opts = GenerativeVQAOptions.parse({"llm": {"train": "lora"}, "llavit": {"visual_qkv": True}}, "model")
    with pytest.raises(ConfigError, match="lora"):
        create_generative_vqa_model(opts, build_prompt_format(opts, smollm_tokenizer), lm=_tiny_lm(smollm_tokenizer))


def test_shipped_config_and_variants_validate():
    from conftest import ROOT

    from mmllm.config import load_config
    from mmllm.engine.launch import task_for
    from mmllm.engine.registry import get_task
    from mmllm.errors import ConfigError

    entry = get_task("mmllm_vqa_generative")
    for overrides in entry.variants.values():
        task = task_for(load_config(ROOT / "configs/vqa/easyvqa_llava_smollm2.yaml", list(overrides)))
        assert task.model_cfg.llm.source == "smollm2-135m"
    llavit = task_for(load_config(entry.default_config, list(entry.variants["llavit"]))).model_cfg.llavit
    assert llavit.visual_qkv and llavit.bidirectional_visual and llavit.feature_layers == [2, -1]
    with pytest.raises(ConfigError, match="visual_qvk"):
        task_for(load_config(entry.default_config, ["model.llavit.visual_qvk=true"]))


def test_eval_subset_is_the_same_for_every_training_seed(tmp_path):
    """Runs of different seeds (and the methods compared with each other) must answer the same questions."""
    from tiny_vqa import write_images_and_qa

    from mmllm.config import load_config
    from mmllm.engine.launch import task_for
    from mmllm.engine.preprocess import Preprocess

    data = write_images_and_qa(tmp_path / "data", n_images=12)
    split = {
        "questions": str(data / "questions.json"),
        "annotations": str(data / "annotations.json"),
        "image_root": str(data / "images"),
    }
    all_ids = {q["question_id"] for q in json.loads((data / "questions.json").read_text())["questions"]}
    assert len(all_ids) > 8

    def test_ids(*options):
        cfg = load_config(
            ROOT_CONFIG, [f"run.output_dir={tmp_path / 'run'}", "datasets.mmllm_vqa.eval_limit=8", *options]
        )
        cfg.datasets.mmllm_vqa.splits = {"train": split, "test": split}
        task = task_for(cfg)
        task._preprocess = Preprocess.shared(lambda image: image)  # the split's ids need no tokenizer or transform
        return task.build_datasets()["test"].ids

    first = test_ids("run.seed=1")
    assert len(first) == 8 and set(first) <= all_ids and first == sorted(first)
    assert test_ids("run.seed=2") == first
    assert test_ids("run.seed=1", "datasets.mmllm_vqa.eval_subset_seed=5") != first
