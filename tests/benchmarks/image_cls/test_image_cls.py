"""Image classification: where the block sits in the ViT, top-k metrics, the evaluate CLI, the task."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf
from tiny_llms import save_tiny

from mmllm.errors import CheckpointError, ConfigError, DataError
from vision.classification import evaluate
from vision.classification.evaluate import corruption_summary, topk_accuracy
from vision.classification.model import ViTLLMClassifier, create_vit, create_vit_cls_model
from vision.classification.task import ClsModelOptions

TINY_VIT = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    save_tiny("llama", folder)
    return str(folder)


def classifier(tiny_llm, insert_after=None, kind="llm_block", **extra):
    block = {"kind": kind, "source": tiny_llm, "dtype": "float32"} if kind != "none" else {"kind": "none"}
    options = ClsModelOptions(
        vit="vit_tiny_patch16_224", vit_kwargs=TINY_VIT, insert_after=insert_after, llm_block=block, **extra
    )
    torch.manual_seed(0)
    return create_vit_cls_model(options, num_classes=5).eval()


# ------------------------------------------------------------------ where the block sits
@pytest.mark.parametrize("insert_after, k", [(None, 3), (0, 0), (1, 1), (3, 3), (-1, 3), (-4, 0)])
def test_block_sees_block_k_output_and_feeds_block_k_plus_1(tiny_llm, insert_after, k):
    model = classifier(tiny_llm, insert_after)
    assert model.insert_after == k
    seen = {}

    def keep(name, what):
        def hook(module, args, output):
            seen.setdefault(name, []).append(output if what == "out" else args[0])

        return hook

    vit = model.vit
    for i, block in enumerate(vit.blocks):
        block.register_forward_hook(keep(f"in{i}", "in"))
        block.register_forward_hook(keep(f"out{i}", "out"))
    model.llm_block.register_forward_hook(keep("llm_in", "in"))
    model.llm_block.register_forward_hook(keep("llm_out", "out"))
    vit.norm.register_forward_hook(keep("norm_in", "in"))
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert all(len(v) == 1 for v in seen.values())  # every ViT block and the LLM block ran exactly once
    assert seen["llm_in"][0].shape == (2, 1 + 4, 32)  # [CLS] + 2x2 patches
    assert torch.equal(seen["llm_in"][0], seen[f"out{k}"][0])  # the block receives block k's output ...
    successor = seen[f"in{k + 1}"][0] if k + 1 < len(vit.blocks) else seen["norm_in"][0]
    assert torch.equal(successor, seen["llm_out"][0])  # ... and block k+1 (or the final norm) receives its output
    assert not torch.equal(seen["llm_out"][0], seen["llm_in"][0])
    for i in range(k):  # blocks before k still chain as in timm
        assert torch.equal(seen[f"in{i + 1}"][0], seen[f"out{i}"][0])


@pytest.mark.parametrize("insert_after", [0, 2, None])
def test_without_a_block_the_model_is_timm_forward(tiny_llm, insert_after):
    """kind none at any depth reproduces timm's own VisionTransformer.forward (prefix-token order,
    position embedding, norm and head all come from timm's public path)."""
    model = classifier(tiny_llm, insert_after, kind="none")
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model.vit(images), rtol=0, atol=0)


def test_register_tokens_and_average_pool_keep_timm_order(tiny_llm):
    vit = create_vit("vit_tiny_patch16_224", 4, {**TINY_VIT, "reg_tokens": 2, "global_pool": "avg"})
    from mmllm import build_visual_llm_layer

    model = ViTLLMClassifier(vit, build_visual_llm_layer({"kind": "none"}, 32), insert_after=1).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(images), vit(images), rtol=0, atol=0)


def test_insertion_point_out_of_range_names_the_depth(tiny_llm):
    for bad in (4, -5, 99):
        with pytest.raises(ConfigError, match=r"outside the ViT's 4 blocks"):
            classifier(tiny_llm, bad, kind="none")


def test_only_timm_vision_transformers(tiny_llm):
    with pytest.raises(ConfigError, match="not a timm VisionTransformer"):
        create_vit("resnet18", 3)
    with pytest.raises(ConfigError, match="vit_nonexistent"):
        create_vit("vit_nonexistent", 3)


def test_block_is_frozen_and_gradients_reach_the_vit(tiny_llm):
    model = classifier(tiny_llm, 1).train()
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is None for p in model.llm_block.layers.parameters())
    assert model.llm_block.adapter_in.weight.grad is not None
    assert model.vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_local_checkpoint_loads_and_replaces_a_head_of_another_size(tmp_path):
    torch.manual_seed(1)
    source = create_vit("vit_tiny_patch16_224", 1000, TINY_VIT)
    path = tmp_path / "deit.pth"
    torch.save({"model": source.state_dict()}, path)  # DeiT's release format
    vit = create_vit("vit_tiny_patch16_224", 5, TINY_VIT, str(path))
    torch.testing.assert_close(vit.blocks[2].mlp.fc1.weight, source.blocks[2].mlp.fc1.weight)
    torch.testing.assert_close(vit.pos_embed, source.pos_embed)
    assert vit.head.weight.shape == (5, 32)
    # another grid size: timm's filter resamples the position embedding
    bigger = create_vit("vit_tiny_patch16_224", 5, {**TINY_VIT, "img_size": 24}, str(path))
    assert bigger.pos_embed.shape == (1, 1 + 9, 32)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_vit("vit_tiny_patch16_224", 5, TINY_VIT, str(tmp_path / "none.pth"))
    wide = tmp_path / "wide.pth"
    torch.save(create_vit("vit_tiny_patch16_224", 5, {**TINY_VIT, "embed_dim": 64}).state_dict(), wide)
    with pytest.raises(CheckpointError, match="does not fit"):
        create_vit("vit_tiny_patch16_224", 5, TINY_VIT, str(wide))
    code = tmp_path / "code.pth"
    torch.save({"model": source.state_dict(), "hook": Path}, code)  # a pickled class: not plain tensors
    with pytest.raises(CheckpointError, match="cannot read"):
        create_vit("vit_tiny_patch16_224", 5, TINY_VIT, str(code))


# ------------------------------------------------------------------ metrics
def test_topk_hand_computed_with_ties():
    logits = np.array(
        [
            [0.9, 0.1, 0, 0, 0, 0],  # label 0: clearly first            -> top1 1,   top5 1
            [1, 1, 1, 1, 1, 1],  # label 3: tied with all 6              -> top1 1/6, top5 5/6
            [5, 4, 3, 2, 1, 0],  # label 5: last                         -> top1 0,   top5 0
            [2, 3, 3, 1, 3, 0],  # label 1: tied first with 2 others     -> top1 1/3, top5 1
        ]
    )
    labels = np.array([0, 3, 5, 1])
    result = topk_accuracy(logits, labels)
    assert result["top1"] == pytest.approx(100 * (1 + 1 / 6 + 0 + 1 / 3) / 4)  # 37.5
    assert result["top5"] == pytest.approx(100 * (1 + 5 / 6 + 0 + 1) / 4)  # 70.83
    # order of the columns does not matter (no sort-dependent tie breaking)
    perm = np.array([5, 3, 1, 0, 2, 4])
    inverse = np.argsort(perm)
    assert topk_accuracy(logits[:, perm], inverse[labels]) == pytest.approx(result)


def test_topk_without_ties_matches_torch_topk():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 12)), rng.integers(0, 12, 200)
    top = torch.topk(torch.from_numpy(logits), 5, dim=1).indices.numpy()
    result = topk_accuracy(logits, labels)
    assert result["top1"] == pytest.approx(100 * np.mean(top[:, 0] == labels))
    assert result["top5"] == pytest.approx(100 * np.mean((top == labels[:, None]).any(axis=1)))


def test_top5_is_not_reported_when_it_is_trivial():
    assert set(topk_accuracy(np.eye(5), np.arange(5))) == {"top1"}


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (np.array([[0.1, np.nan], [1, 0]]), np.array([0, 1]), "NaN/inf"),
        (np.array([[0.1, np.inf], [1, 0]]), np.array([0, 1]), "NaN/inf"),
        (np.zeros((3, 4)), np.array([0, 1]), "3 logit rows but labels"),
        (np.zeros((2, 4)), np.array([0, 4]), "outside the class list 0..3"),
        (np.zeros((2, 4)), np.array([0, -1]), "outside the class list"),
        (np.zeros((2, 4)), np.array([0.5, 1.0]), "must be integers"),
        (np.zeros((0, 4)), np.zeros(0, int), "N >= 1"),
        (np.zeros(4), np.zeros(4, int), r"\[N, C\]"),
    ],
)
def test_bad_predictions_are_refused(logits, labels, message):
    with pytest.raises(DataError, match=message):
        topk_accuracy(logits, labels)


def test_corruption_summary_averages_severities_then_corruptions():
    summary = corruption_summary({("noise", 1): 10.0, ("noise", 2): 20.0, ("blur", 1): 30.0})
    assert summary == {"corrupted_blur_top1": 30.0, "corrupted_noise_top1": 15.0, "corrupted_top1": 22.5}


def run_cli(capsys, *argv):
    code = evaluate.main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_evaluate_cli_on_prediction_files(tmp_path, capsys):
    from test_image_cls_data import tree

    folder = tree(tmp_path / "val", {"a": 2, "b": 1})  # keys a/img0.png a/img1.png b/img0.png
    logits = np.array([[2.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    npz = tmp_path / "p.npz"
    np.savez(npz, logits=logits, paths=np.array(["a/img0.png", "a/img1.png", "b/img0.png"]))
    code, report, _ = run_cli(capsys, "--predictions", str(npz), "--labels", str(folder))
    assert code == 0 and report == {"top1": pytest.approx(200 / 3), "num_samples": 3, "num_classes": 2}
    labels_txt = tmp_path / "labels.txt"
    labels_txt.write_text("0\n1\n1\n")
    code, report, _ = run_cli(capsys, "--predictions", str(npz), "--labels", str(labels_txt))
    assert report["top1"] == pytest.approx(100.0)
    bad = {
        "dup.npz": dict(logits=logits, paths=np.array(["a/img0.png", "a/img0.png", "b/img0.png"])),
        "partial.npz": dict(logits=logits[:2], paths=np.array(["a/img0.png", "a/img1.png"])),
        "stranger.npz": dict(logits=logits, paths=np.array(["a/img0.png", "a/img1.png", "c/x.png"])),
        "nan.npz": dict(
            logits=np.where(logits > 2, np.nan, logits), paths=np.array(["a/img0.png", "a/img1.png", "b/img0.png"])
        ),
    }
    expected = {"dup.npz": "duplicated", "partial.npz": "cover 2 of the 3", "stranger.npz": "not in", "nan.npz": "NaN"}
    for name, arrays in bad.items():
        np.savez(tmp_path / name, **arrays)
        code, _, err = run_cli(capsys, "--predictions", str(tmp_path / name), "--labels", str(folder))
        assert code == 2 and expected[name] in err and err.count("\n") == 1, (name, err)
    np.savez(tmp_path / "short.npz", logits=logits, labels=np.array([0, 1]))
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "short.npz"))
    assert code == 2 and "3 logit rows but labels" in err
    np.savez(tmp_path / "nolabels.npz", logits=logits)
    code, _, err = run_cli(capsys, "--predictions", str(tmp_path / "nolabels.npz"))
    assert code == 2 and "pass --labels" in err


# ------------------------------------------------------------------ task and configs
def image_tree(root, classes=("0", "1", "2"), per_class=4, size=16):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = (rng.random((size, size)) * 60 + 60 * int(c)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(root / split / c / f"{i}.png")
    return root


def task_from(config, *options):
    from mmllm.config import load_config
    from mmllm.engine.registry import get_task

    cfg = load_config(config, list(options))
    return get_task(cfg.run.task).build(cfg)


def test_registry_entry_and_configs_parse(tmp_path):
    from mmllm.engine.registry import get_task

    entry = get_task("mmllm_image_cls")
    assert (entry.dataset, entry.model_arch, entry.metric, entry.higher_is_better) == (
        "mmllm_image_cls",
        "mmllm_vit_cls",
        "top1",
        True,
    )
    assert entry.default_config == ROOT / "configs/vision/image_cls_mnist.yaml" and entry.default_config.is_file()
    assert dict(entry.variants)["no_block"] == ("model.llm_block.kind=none",)
    mnist = task_from(entry.default_config)
    assert mnist.model_cfg.llm_block["source"] == "smollm2-135m" and mnist.data_cfg.per_class == {
        "train": 100,
        "val": 20,
    }
    root = image_tree(tmp_path / "data")
    deit = task_from(
        ROOT / "configs/vision/image_cls_imagenet_deit_small.yaml", f"datasets.mmllm_image_cls.root={root}"
    )
    deit.build_preprocess()  # DeiT's recipe builds: RandAugment, random erasing, Mixup/CutMix with smoothing
    assert deit.mixup is not None and deit.mixup.label_smoothing == 0.1 and deit.mixup.cutmix_alpha == 1.0
    assert "RandAugment" in repr(deit.train_transform) and "RandomErasing" in repr(deit.train_transform)
    assert deit.image_size() == 224
    with pytest.raises(ConfigError, match="insert_aftr: unknown key.*insert_after"):
        task_from(entry.default_config, "model.insert_aftr=2")


def test_task_errors_for_bad_setups(tmp_path):
    root = image_tree(tmp_path / "data")
    config = ROOT / "configs/vision/image_cls_mnist.yaml"
    common = [
        f"datasets.mmllm_image_cls.root={root}",
        "datasets.mmllm_image_cls.corrupted=null",
        "datasets.mmllm_image_cls.prepare=null",
    ]
    with pytest.raises(ConfigError, match="model.num_classes=10 but the train split has 3"):
        task_from(config, *common, "model.num_classes=10").build_model()
    with pytest.raises(ConfigError, match="randaugment"):
        task_from(
            config, *common, "datasets.mmllm_image_cls.augment=true", "datasets.mmllm_image_cls.randaugment=rand-zz"
        ).build_preprocess()
    with pytest.raises(ConfigError, match="even run.batch_size_train"):
        task_from(
            config, *common, "datasets.mmllm_image_cls.mixup_alpha=0.8", "run.batch_size_train=3"
        ).build_preprocess()
    (root / "test" / "3").mkdir()  # a test label outside the training class list
    from test_image_cls_data import write_png

    write_png(root / "test" / "3" / "x.png")
    task = task_from(config, *common)
    with pytest.raises(ConfigError, match="call task.build_preprocess"):  # the datasets take its transforms
        task.build_datasets()
    task.build_preprocess()
    with pytest.raises(DataError, match=r"not in the training class list \['3'\]"):
        task.build_datasets()


def test_task_loss_and_evaluation_files(tmp_path, tiny_llm, capsys):
    root = image_tree(tmp_path / "data")
    corrupted = root / "corrupted"
    from vision.classification.corruptions import corrupt_folder

    corrupt_folder(root / "test", corrupted, names=("contrast", "gaussian_noise"))
    task = task_from(
        ROOT / "configs/vision/image_cls_mnist.yaml",
        f"datasets.mmllm_image_cls.root={root}",
        "datasets.mmllm_image_cls.prepare=null",
        "datasets.mmllm_image_cls.mixup_alpha=0.8",
        "datasets.mmllm_image_cls.cutmix_alpha=1.0",
        f"model.vit_kwargs={json.dumps(TINY_VIT)}",
        f"model.llm_block.source={tiny_llm}",
        "model.llm_block.dtype=float32",
        f"run.output_dir={tmp_path / 'run'}",
        "run.batch_size_eval=5",
    )
    task.build_preprocess()
    datasets = task.build_datasets()
    assert sorted(datasets) == ["test", "train", "val"] and len(datasets["train"]) == 12
    assert sorted(datasets["test"].corrupted) == [
        ("contrast", 1),
        ("contrast", 2),
        ("contrast", 3),
        ("gaussian_noise", 1),
        ("gaussian_noise", 2),
        ("gaussian_noise", 3),
    ]
    model = task.build_model()
    batch = task.collate([datasets["train"][i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 16, 16)
    loss, _ = task.training_loss(model, batch)  # Mixup/CutMix soft targets
    assert torch.isfinite(loss) and loss.requires_grad
    metrics = task.evaluate(model, datasets["test"], "test", tmp_path / "out")
    assert set(metrics) == {"top1", "corrupted_contrast_top1", "corrupted_gaussian_noise_top1", "corrupted_top1"}
    written = json.loads((tmp_path / "out/metrics_test.json").read_text())
    assert len(written["corrupted_top1_by_severity"]) == 6 and written["num_samples"] == 12
    # the predictions file the run writes is the evaluate CLI's input format, and gives the same number
    code, report, _ = run_cli(
        capsys, "--predictions", str(tmp_path / "out/predictions_test.npz"), "--labels", str(root / "test")
    )
    assert code == 0 and report["top1"] == pytest.approx(metrics["top1"])
    assert OmegaConf.is_config(task.cfg)
