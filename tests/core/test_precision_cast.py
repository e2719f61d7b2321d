"""A reloaded model must evaluate in the dtypes it trained in: ``cast_parameters`` against DeepSpeed's own bf16 cast."""

import json
import os
import socket
import subprocess
import sys

import torch

from mmllm.precision import cast_parameters

SCRIPT = r"""
import json, sys, torch, deepspeed
sys.path.insert(0, sys.argv[1])
from test_precision_cast import tiny_model
model = tiny_model()
engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()),
                                  config={"train_batch_size": 1, "bf16": {"enabled": True}, "zero_optimization": {"stage": 0}})
print(json.dumps({n: str(t.dtype) for n, t in [*engine.module.named_parameters(), *engine.module.named_buffers()]}))
"""


def tiny_model() -> torch.nn.Module:
    """Parameters beside the two kinds of float buffer that matter: rotary inv_freq and batch-norm statistics."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    torch.manual_seed(0)
    model = torch.nn.Module()
    model.rotary = LlamaRotaryEmbedding(LlamaConfig(hidden_size=16, num_attention_heads=2))
    model.norm = torch.nn.BatchNorm1d(4)
    model.proj = torch.nn.Linear(4, 4)
    return model


def test_cast_parameters_matches_deepspeed_bf16(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "DS_ACCELERATOR": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, os.path.dirname(__file__)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    deepspeed_dtypes = json.loads(out.stdout.strip().splitlines()[-1])
    ours = cast_parameters(tiny_model(), torch.bfloat16)
    our_dtypes = {n: str(t.dtype) for n, t in [*ours.named_parameters(), *ours.named_buffers()]}
    assert our_dtypes == deepspeed_dtypes
    assert our_dtypes["proj.weight"] == "torch.bfloat16" and our_dtypes["rotary.inv_freq"] == "torch.float32"
    assert our_dtypes["norm.running_mean"] == "torch.float32"
