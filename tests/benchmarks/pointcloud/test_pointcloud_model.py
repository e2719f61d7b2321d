"""The Point-BERT-style classifier: where the block sits (forward hooks), the head input, dtypes."""

import pytest
import torch
from tiny_llms import random_llama_block

from mmllm.engine.batch import move_batch
from mmllm.errors import ConfigError
from mmllm.precision import cast_parameters
from vision.pointcloud.model import PointBERTOptions, create_pointbert_model, resolve_insert_after
from vision.pointcloud.task import PointCloudClsTask

TINY_LLM = random_llama_block()


def tiny(insert_after=None, block=TINY_LLM, depth=3):
    opts = PointBERTOptions(
        num_groups=8,
        group_size=4,
        dim=16,
        depth=depth,
        num_heads=2,
        tokenizer_hidden=8,
        pos_hidden=8,
        head_hidden=8,
        drop_path=0.0,
        insert_after=insert_after,
        llm_block=block,
    )
    torch.manual_seed(0)
    return create_pointbert_model(opts, num_classes=5).eval()


def record(model):
    """Hooks: each transformer block's input/output, the LLM block's input/output per call, the norm and head inputs."""
    seen = {"block_in": {}, "block_out": {}, "llm": []}
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: seen["block_in"].__setitem__(i, a[0].clone()))
        block.register_forward_hook(lambda m, a, out, i=i: seen["block_out"].__setitem__(i, out.clone()))
    model.llm_block.register_forward_hook(lambda m, a, out: seen["llm"].append((a[0].clone(), out.clone())))
    model.norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("norm_in", a[0].clone()))
    model.pos_embed.register_forward_hook(lambda m, a, out: seen.__setitem__("pos", out.clone()))
    model.head.register_forward_pre_hook(lambda m, a: seen.__setitem__("head_in", a[0].clone()))
    model.norm.register_forward_hook(lambda m, a, out: seen.__setitem__("norm_out", out.clone()))
    return seen


@pytest.mark.parametrize("insert_after", [0, 1, 2, 3, None, -1])
def test_block_sits_after_transformer_block_k(insert_after):
    model = tiny(insert_after)
    k = resolve_insert_after(insert_after, 3)
    seen = record(model)
    points = torch.rand(2, 32, 3)
    with torch.no_grad():
        model(points)
    assert len(seen["llm"]) == 1  # called once
    llm_in, llm_out = seen["llm"][0]
    assert llm_in.shape == (2, 1 + 8, 16)  # CLS + 8 group tokens
    pos = torch.cat([model.cls_pos.expand(2, -1, -1), seen["pos"]], dim=1)
    if k == 0:  # the block sees the [CLS] + tokenizer output, before any transformer block
        with torch.no_grad():
            tokens, _ = model.tokenizer(points)
        assert torch.equal(llm_in, torch.cat([model.cls_token.expand(2, -1, -1), tokens], dim=1))
    else:  # it sees exactly what transformer block k-1 produced
        assert torch.equal(llm_in, seen["block_out"][k - 1])
    if k < 3:  # and transformer block k gets its output (plus the position embedding, as every Point-BERT block)
        assert torch.allclose(seen["block_in"][k], llm_out + pos)
    else:  # after the last block: straight into the final norm
        assert torch.equal(seen["norm_in"], llm_out)


def test_head_sees_cls_and_max_pooled_tokens():
    model = tiny()
    seen = record(model)
    with torch.no_grad():
        model(torch.rand(3, 32, 3))
    x = seen["norm_out"]
    assert torch.equal(seen["head_in"], torch.cat([x[:, 0], x[:, 1:].amax(1)], dim=-1))


def test_insert_after_out_of_range_and_no_block():
    with pytest.raises(ConfigError, match="insert_after=4 is outside"):
        tiny(4)
    with pytest.raises(ConfigError, match="insert_after=-4 is outside"):
        tiny(-4)
    model = tiny(block={"kind": "none"})
    assert model(torch.rand(2, 32, 3)).shape == (2, 5)
    with pytest.raises(ConfigError, match="num_classes=3 but the data has 5"):
        create_pointbert_model(PointBERTOptions(num_classes=3, llm_block={"kind": "none"}), 5)


def test_bf16_model_takes_fp32_points_and_trains():
    # parameters bf16, BatchNorm statistics fp32: what DeepSpeed's bf16 does to a training model
    model = cast_parameters(tiny(), torch.bfloat16).train()
    # the task never casts coordinates: move_batch leaves points fp32 even in a bf16 run
    batch = move_batch(
        {"points": torch.rand(4, 32, 3), "labels": torch.tensor([0, 1, 2, 3])},
        torch.device("cpu"),
        torch.bfloat16,
        PointCloudClsTask.compute_dtype_inputs,
    )
    assert batch["points"].dtype == torch.float32
    logits = model(batch["points"])
    assert logits.dtype == torch.bfloat16
    torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
    assert model.tokenizer.first[0].weight.grad is not None
    assert model.llm_block.adapter_in.weight.grad is not None
    assert all(p.grad is None for p in model.llm_block.layers.parameters())  # frozen
