"""VLAP: Sinkhorn marginals, the swapped-prediction loss by hand, the word prior, what trains, and the
retrieval task end to end through the engine with a tiny LLM."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from tiny_llms import tiny_model

from mmllm.errors import ConfigError, DataError
from mmllm.models.vlap import (
    AssignmentPrediction,
    fit_prior,
    sinkhorn_knopp,
    swapped_prediction_loss,
    word_frequency_prior,
)


def _case(B=4, K=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (
        torch.nn.functional.normalize(torch.randn(B, 8, generator=g), dim=-1)
        @ torch.nn.functional.normalize(torch.randn(K, 8, generator=g), dim=-1).T
    )  # cosines, as in VLAP
    prior = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])[:K]
    return scores, prior / prior.sum()


@pytest.mark.parametrize("epsilon,iterations", [(0.05, 2000), (0.01, 20000)])
def test_sinkhorn_marginals_match_prior_and_uniform(epsilon, iterations):
    scores, prior = _case()
    plan = sinkhorn_knopp(scores, prior, epsilon=epsilon, iterations=iterations).double()
    B = scores.shape[0]
    assert torch.allclose(plan.sum(0), prior.double(), atol=1e-4)  # words: the frequency prior
    assert torch.allclose(plan.sum(1), torch.full((B,), 1 / B, dtype=torch.float64), atol=1e-4)  # samples: 1/B
    if plan.min() < 1e-30:  # eps = 0.01: some entries underflow fp32 (exp(-200)); the form is checked at 0.05
        return
    # the plan has the entropic-OT form diag(a) exp(S/eps) diag(b): log P - S/eps is a row term + a column term
    resid = plan.log() - scores.double() / epsilon
    resid = resid - resid.mean(1, keepdim=True) - resid.mean(0, keepdim=True) + resid.mean()
    assert resid.abs().max() < 1e-6


def test_sinkhorn_paper_setting_three_iterations():
    """3 iterations (the paper's setting): rows exact, columns only approximately at the prior."""
    scores, prior = _case()
    plan = sinkhorn_knopp(scores, prior, epsilon=0.01, iterations=3)
    assert torch.allclose(plan.sum(1), torch.full((4,), 0.25), atol=1e-6)
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    # a sample clearly closest to one word puts (nearly) all its mass there when the prior allows it
    sharp = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    plan = sinkhorn_knopp(sharp, torch.tensor([0.5, 0.5]), epsilon=0.01, iterations=3)
    assert torch.allclose(plan, torch.tensor([[0.5, 0.0], [0.0, 0.5]]), atol=1e-6)
    with pytest.raises(DataError):
        sinkhorn_knopp(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0.5, 0.5]))


def test_swapped_prediction_loss_by_hand():
    """2 samples x 3 words, temperature 0.5; scores chosen so the softmaxes are simple fractions."""
    tau = 0.5
    visual = tau * torch.tensor(
        [[0.0, math.log(2), 0.0], [math.log(3), 0.0, 0.0]]
    )  # p_v = [1/4 1/2 1/4], [3/5 1/5 1/5]
    text = tau * torch.tensor([[0.0, 0.0, 0.0], [math.log(4), 0.0, 0.0]])  # p_t = [1/3 1/3 1/3], [2/3 1/6 1/6]
    text_codes = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    visual_codes = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]])
    out = swapped_prediction_loss(visual, text, visual_codes, text_codes, tau)
    # visual predicts text codes: -(1/2)[log(1/2) + (1/2)log(3/5) + (1/2)log(1/5)]
    v_from_t = -(math.log(1 / 2) + 0.5 * math.log(3 / 5) + 0.5 * math.log(1 / 5)) / 2
    # text predicts visual codes: -(1/2)[log(1/3) + log(1/6)]
    t_from_v = -(math.log(1 / 3) + math.log(1 / 6)) / 2
    assert out["v_from_t"].item() == pytest.approx(v_from_t, abs=1e-6)
    assert out["t_from_v"].item() == pytest.approx(t_from_v, abs=1e-6)
    assert out["loss"].item() == pytest.approx((v_from_t + t_from_v) / 2, abs=1e-6)  # averaged, as the release
    with pytest.raises(ConfigError):
        swapped_prediction_loss(visual, text, visual_codes, text_codes, 0.0)


def test_word_prior_counts_smoothing_and_ignored_ids():
    prior = word_frequency_prior([[1, 2, 2, 0], [2, 3, 0]], vocab_size=5, smoothing=0.5, ignore_ids=[0])
    expected = torch.tensor([0.5, 1.5, 3.5, 1.5, 0.5]) / 7.5  # counts [0,1,3,1,0] (id 0 = padding, not counted) + 0.5
    assert torch.allclose(prior, expected)
    with pytest.raises(DataError, match="outside the vocabulary"):
        word_frequency_prior([[7]], vocab_size=5)
    with pytest.raises(DataError, match="0/0"):
        word_frequency_prior([], vocab_size=5, smoothing=0)
    # an embedding table padded past the tokenizer: the extra rows get no mass; a shorter one is refused
    assert torch.equal(fit_prior(prior, 7), torch.cat([expected, torch.zeros(2)]))
    with pytest.raises(ConfigError, match="only 4 rows"):
        fit_prior(prior, 4)


def test_assignment_gradient_reaches_the_visual_side_only_through_the_text_codes():
    torch.manual_seed(0)
    words = torch.randn(10, 6)
    assign = AssignmentPrediction(words, torch.full((10,), 0.1), temperature=0.1)
    visual = torch.randn(4, 6, requires_grad=True)
    text = torch.randn(4, 6)
    out = assign(visual, text)
    out["loss"].backward()
    assert visual.grad is not None and visual.grad.abs().sum() > 0
    # rebuilt by hand: text codes from Sinkhorn on the text scores, visual softmax at the temperature
    sv = torch.nn.functional.normalize(visual.detach(), dim=-1) @ torch.nn.functional.normalize(words, dim=-1).T
    st = torch.nn.functional.normalize(text, dim=-1) @ torch.nn.functional.normalize(words, dim=-1).T
    qt = sinkhorn_knopp(st, torch.full((10,), 0.1), 0.01, 3) * 4
    ref = -(qt * torch.log_softmax(sv / 0.1, -1)).sum(-1).mean()
    assert out["v_from_t"].item() == pytest.approx(ref.item(), rel=1e-5)
    with pytest.raises(DataError, match="distribution"):
        AssignmentPrediction(words, torch.full((10,), 0.2))


# ---------------------------------------------------------------------- the retrieval task
@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random LLaMA (tests/tiny_llms.py) with SmolLM2's tokenizer and vocabulary, as a local HF folder."""
    from mmllm.models.llava import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    folder = tmp_path_factory.mktemp("tiny_lm")
    model = tiny_model(
        "llama",
        vocab_size=len(tok),
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def _config(tmp_path, data, lm_dir, **model):
    split = {"annotation": str(data / "captions_train.json"), "image_root": str(data / "images")}
    test = {"annotation": str(data / "captions_val.json"), "image_root": str(data / "images")}
    cfg = {
        "model": {
            "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "heads": 2}},
            "llm": str(lm_dir),
            "llm_dtype": "fp32",
            "caption_prompt": "An image of",
            **model,
        },
        "datasets": {"mmllm_retrieval": {"splits": {"train": split, "test": test}}},
        "run": {
            "task": "mmllm_retrieval_vlap",
            "output_dir": str(tmp_path / "run"),
            "deepspeed_config": str(ROOT / "configs/deepspeed/zero0.json"),
            "precision": "fp32",
            "seed": 0,
            "max_epoch": 4,
            "max_steps": 2,
            "batch_size_train": 4,
            "batch_size_eval": 4,
            "init_lr": 1e-2,
            "log_every": 1,
            "num_workers": 0,
            "evaluate_val": False,
        },
    }
    return cfg


def test_only_the_linear_layer_trains(tmp_path, tiny_lm_dir):
    from omegaconf import OmegaConf
    from tiny_vqa import write_images_and_qa

    from mmllm.engine.registry import get_task

    data = write_images_and_qa(tmp_path / "d", n_images=6)
    cfg = OmegaConf.create(_config(tmp_path, data, tiny_lm_dir))
    task = get_task("mmllm_retrieval_vlap").build(cfg)
    task.build_preprocess()
    model = task.build_model()
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["projector.linear.bias", "projector.linear.weight"]
    # the word space is the LLM's own input-embedding table, normalised
    lm_table = model.captioner.lm.get_input_embeddings().weight.float()
    assert torch.allclose(model.assign.words, torch.nn.functional.normalize(lm_table, dim=-1), atol=1e-6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = task.collate([task.build_datasets()["train"][i] for i in range(4)])
    out = model.train()(batch)
    assert set(out) == {"loss", "assign_loss", "v_from_t", "t_from_v", "caption_loss"}
    out["loss"].backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"projector.linear.weight", "projector.linear.bias"}
    assert model.vision.training is False and model.captioner.lm.training is False


def test_vlap_retrieval_trains_two_steps_end_to_end(tmp_path, tiny_lm_dir):
    from tiny_vqa import write_images_and_qa

    from mmllm.model_file import read_model_file

    data = write_images_and_qa(tmp_path / "d", n_images=6)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, data, tiny_lm_dir, text_features="llm_hidden")))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    }
    env["DS_ACCELERATOR"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "train", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    keys = ["txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"]
    assert all(0.0 <= summary[f"test_{k}"] <= 100.0 for k in keys)
    # 6 test images, one caption each: R@10 covers everything
    assert summary["test_txt_r10"] == 100.0 and summary["test_img_r10"] == 100.0
    train = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in train if m.get("split") == "train"]
    assert len(train) == 2 and all({"assign_loss", "caption_loss"} <= set(m) for m in train)
    state = read_model_file(run / "model_final.pt")["state_dict"]
    assert "projector.linear.weight" in state and "assign.prior" in state
    assert not any(k.startswith("captioner.lm.") for k in state)  # the frozen LLM is reloaded from its source


def test_vqa_with_vlap_projector_trains_only_the_linear_layer_and_generates(tmp_path, tiny_lm_dir):
    """VLAP's linear layer as the LLaVA path's projector: assignment + answer loss, greedy generation."""
    from omegaconf import OmegaConf
    from tiny_vqa import write_images_and_qa

    from mmllm.engine.registry import get_task

    data = write_images_and_qa(tmp_path / "d", n_images=6)
    split = {
        "questions": str(data / "questions.json"),
        "annotations": str(data / "annotations.json"),
        "image_root": str(data / "images"),
    }
    cfg = OmegaConf.create(
        {
            "model": {
                "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "heads": 2}},
                "train_vision": False,
                "llm": {"source": str(tiny_lm_dir), "dtype": "fp32", "prompt": "plain", "projector": "linear"},
                "max_new_tokens": 3,
            },
            "datasets": {"mmllm_vqa": {"image_pattern": "{image_id}.png", "splits": {"train": split}}},
            "run": {"task": "mmllm_vqa_vlap", "output_dir": str(tmp_path / "run")},
        }
    )
    task = get_task("mmllm_vqa_vlap").build(cfg)
    task.build_preprocess()
    model = task.build_model()
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == [
        "vqa.lm.projector.bias",
        "vqa.lm.projector.weight",
    ]
    # the prior counts question + answer tokens of the training split
    assert (
        model.assign.prior.argmax().item()
        in task.fmt.tokenizer("what color is the image?")["input_ids"] + task.fmt.tokenizer(" image")["input_ids"]
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = task.collate([task.build_datasets()["train"][i] for i in range(4)])
    loss, logs = task.training_loss(model.train(), batch)
    # the release's weighting (train.py l. 527): L_answer + 0.1 · L_map; the text side through the frozen LLM
    assert loss.item() == pytest.approx(logs["answer_loss"] + 0.1 * logs["assign_loss"], rel=1e-5)
    assert model.text_features == "llm_hidden" and model.assign.temperature == pytest.approx(0.01)
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])} == {
        "vqa.lm.projector.weight",
        "vqa.lm.projector.bias",
    }
    tokens = model.eval().generate(batch["images"], batch["prompt_ids"], batch["prompt_mask"], 3)
    assert len(tokens) == 4 and all(len(t) <= 3 for t in tokens)
    cfg.model.llm.projector = "mlp2"
    with pytest.raises(ConfigError, match="one linear layer"):
        get_task("mmllm_vqa_vlap").build(cfg).build_model()
