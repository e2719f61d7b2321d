"""LAVIS's own inference API on our models (``import mmllm.lavis`` then ``load_model_and_preprocess``),
and LAVIS's run keys honoured (or refused) by our trainer. The answers are compared with the trained
run's own evaluation (results_test.json, written by the training process through the task's pipeline)."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from PIL import Image
from test_engine import clean_env
from tiny_vqa import tiny_config, write_images_and_qa

import mmllm.lavis  # noqa: F401 - the one documented import: our models and processors in LAVIS's registry
from mmllm.errors import ConfigError

ARCH = "mmllm_meter_vqa"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images_and_qa(tmp_path_factory.mktemp("lavisinfer"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A tiny VQA run trained in fp32 (LAVIS's load_model_and_preprocess runs the model in fp32 on CPU)."""
    out = tmp_path_factory.mktemp("infer") / "run"
    cfg = tiny_config(data, out, max_epoch=5, init_lr=3e-3, precision="fp32", checkpoint_every=0)
    subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "train", "--config", str(cfg)],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return out, cfg


def questions(data):
    return json.loads((data / "questions.json").read_text())["questions"]


def test_load_model_and_preprocess_answers_as_the_trained_model(data, trained, tmp_path, monkeypatch):
    from lavis.common.registry import registry
    from lavis.models import load_model_and_preprocess

    from mmllm.lavis.adapters import default_preprocess

    out, _ = trained
    model_cfg = tmp_path / "tiny.yaml"  # a LAVIS model type whose weights are the trained run's
    model_cfg.write_text(
        yaml.safe_dump(
            {
                "model": {
                    "arch": ARCH,
                    "model_type": "tiny",
                    "load_finetuned": True,
                    "finetuned": str(out / "model_final.pt"),
                },
                "preprocess": default_preprocess(ARCH, "tiny"),
            }
        )
    )
    monkeypatch.setitem(registry.get_model_class(ARCH).PRETRAINED_MODEL_CONFIG_DICT, "tiny", str(model_cfg))

    model, vis, txt = load_model_and_preprocess(name=ARCH, model_type="tiny", is_eval=True)
    assert not model.training
    qs = questions(data)
    answers = []
    for start in range(0, len(qs), 16):
        chunk = qs[start : start + 16]
        images = torch.stack(
            [vis["eval"](Image.open(data / "images" / f"{q['image_id']}.png").convert("RGB")) for q in chunk]
        )
        answers += model.predict_answers(
            {"image": images, "text_input": [txt["eval"](q["question"]) for q in chunk]}, inference_method="generate"
        )
    expected = {r["question_id"]: r["answer"] for r in json.loads((out / "results_test.json").read_text())}
    assert answers == [expected[q["question_id"]] for q in qs]
    assert len(set(answers)) >= 3  # a trained model, not one constant answer
    with pytest.raises(ConfigError, match="answer_list"):
        model.predict_answers({"image": images[:1], "text_input": ["what color is the image?"]}, answer_list=["red"])


def test_default_model_type_loads_with_its_processors():
    """The documented call: LAVIS's own function, our default model config and its preprocess section."""
    from lavis.models import load_model_and_preprocess

    assert load_model_and_preprocess.__code__.co_filename.endswith("lavis/models/__init__.py")  # LAVIS's code
    model, vis, txt = load_model_and_preprocess(name=ARCH, model_type="default", is_eval=True)
    image = vis["eval"](Image.new("RGB", (80, 60), (200, 30, 30)))
    assert image.shape == (3, 64, 64)  # the default config's ViT input size
    answer = model.predict_answers({"image": image[None], "text_input": [txt["eval"]("what color is the shape?")]})
    assert len(answer) == 1 and answer[0] in model.task._vocab()


# ---------------------------------------------------------------- LAVIS's run keys in our trainer
def trainer_for(cfg_path, **run):
    from omegaconf import OmegaConf

    from mmllm.engine.registry import get_task
    from mmllm.engine.trainer import Trainer

    cfg = OmegaConf.load(cfg_path)
    cfg.run.update(run)
    return Trainer(cfg, get_task(cfg.run.task).build(cfg))


def test_evaluate_only_with_resume_ckpt_path_reproduces_the_run(trained, tmp_path):
    out, cfg = trained
    results = trainer_for(
        cfg,
        evaluate=True,
        resume_ckpt_path=str(out / "model_final.pt"),
        output_dir=str(tmp_path / "eval"),
        test_splits=["val"],
    ).train()
    summary = json.loads((out / "summary.json").read_text())
    assert results["val_accuracy"] == summary["test_accuracy"]  # val and test are the same file here
    assert not (tmp_path / "eval" / "summary.json").exists()  # evaluation only: no training run written


@pytest.mark.parametrize(
    "run,message",
    [
        ({"valid_splits": ["dev"]}, r"run.valid_splits: split\(s\) \['dev'\] were not built"),
        ({"train_splits": ["training"]}, r"run.train_splits: split\(s\) \['training'\]"),
        ({"resume_ckpt_path": "/elsewhere/checkpoints/step4"}, "holds no run to resume"),
        ({"amp": True, "precision": "fp32"}, "run.amp=true asks for bf16 but run.precision='fp32'"),
        ({"evaluate": True, "test_splits": []}, "run.evaluate: no split to evaluate"),
    ],
)
def test_lavis_run_keys_are_refused_when_they_cannot_be_honoured(data, tmp_path, run, message):
    cfg = tiny_config(data, tmp_path / "keys", max_epoch=1)
    with pytest.raises(ConfigError, match=message):
        trainer_for(cfg, **run).train()


def test_resume_ckpt_path_outside_the_run_is_refused(trained, tmp_path):
    out, cfg = trained
    with pytest.raises(ConfigError, match="resumes only a checkpoint of its own run"):
        trainer_for(cfg, resume_ckpt_path=str(tmp_path), resume="always").train()  # the run exists
