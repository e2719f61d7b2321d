"""ZeRO-3 with two processes (torchrun, gloo on CPU), through ``mmllm train``: a run rewound to a
mid-run tag and re-run ends bit-identical to the uninterrupted run (the one-process ZeRO-3 case is
``test_checkpoint_security.test_resume_is_bit_identical``), and its ``model_final.pt`` loads into a
one-process model, every non-frozen tensor present, giving the outputs of the weights DeepSpeed's
own ``zero_to_fp32`` consolidates from the partitioned checkpoint (the independent reference)."""

import json
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from test_engine import free_port
from test_registry import BLOCK, env
from toy_task import ToyModel, ToyModelOptions

from mmllm.model_file import frozen_keys, read_model_file

pytestmark = pytest.mark.integration


def write_config(folder, **run):
    cfg = {
        "model": {"width": 16, "llm_block": BLOCK},
        "datasets": {"toy_tokens": {"num_train": 32, "num_test": 8}},
        "run": {
            "task": "toy_tokens",
            "output_dir": str(folder / "run"),
            "batch_size_train": 4,
            "batch_size_eval": 8,
            "max_steps": 4,
            "max_epoch": 2,
            "init_lr": 1e-2,
            "precision": "fp32",
            "log_every": 1,
            "checkpoint_every": 1,
            "keep_checkpoints": 4,
            "deepspeed_config": str(ROOT / "configs/deepspeed/zero3.json"),
            **run,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(config, *options):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        free_port(),
        "-m",
        "mmllm.cli",
        "train",
        "--import",
        "toy_task",
        "--config",
        str(config),
    ]
    if options:
        cmd += ["--options", *options]
    done = subprocess.run(
        cmd, env={**env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero3")
    straight = write_config(root / "a")
    torchrun(straight)
    resumed = write_config(root / "b")
    torchrun(resumed)
    out = root / "b" / "run"
    (out / "summary.json").unlink()
    (out / "model_final.pt").unlink()
    torchrun(resumed, f"run.resume_ckpt_path={out / 'checkpoints' / 'step2'}")
    return root / "a" / "run", out


def test_two_process_zero3_resume_is_bit_identical(runs):
    a_dir, b_dir = runs
    assert json.loads((a_dir / "summary.json").read_text())["world_size"] == 2
    records = [json.loads(line) for line in (b_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("event") == "resumed"] == [2]
    # the tag holds one ZeRO-3 partition file per rank
    assert len(list((b_dir / "checkpoints" / "step2").glob("*optim_states.pt"))) == 2
    a = read_model_file(a_dir / "model_final.pt")["state_dict"]
    b = read_model_file(b_dir / "model_final.pt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_zero3_model_final_loads_into_one_process_model(runs):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    a_dir, _ = runs
    torch.manual_seed(0)
    model = ToyModel(ToyModelOptions(width=16, llm_block=BLOCK))
    blob = read_model_file(a_dir / "model_final.pt")
    result = model.load_state_dict(blob["state_dict"], strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == frozen_keys(model)
    for key, tensor in blob["state_dict"].items():  # gathered whole, not a rank's partition
        assert tensor.shape == model.state_dict()[key].shape, key

    # reference: DeepSpeed's consolidation of the last tag's ZeRO-3 partitions of the trainable weights;
    # the frozen weights (random_frozen: saved in the file, but for ones in frozen_keys) as loaded
    consolidated = get_fp32_state_dict_from_zero_checkpoint(
        str(a_dir / "checkpoints"), tag="step4", exclude_frozen_parameters=True
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(consolidated) == trainable and trainable < set(blob["state_dict"])
    reference = ToyModel(ToyModelOptions(width=16, llm_block=BLOCK))
    reference.load_state_dict({**model.state_dict(), **consolidated})
    tokens = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens), rtol=0, atol=0)
        assert not torch.equal(model(tokens), ToyModel(ToyModelOptions(width=16, llm_block=BLOCK))(tokens))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
