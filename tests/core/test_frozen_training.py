"""Frozen means frozen; the paper's controls; checkpoints without the frozen weights."""

import pytest
import torch
from tiny_llms import layer_state, save_tiny
from torch import nn

from mmllm import AdapterMLP, FrozenLLMBlock, LLMBlockConfig, NoBlock, build_block, build_visual_llm_layer
from mmllm.blocks import FinetunedBlockConfig, RandomFrozenBlockConfig, RandomTrainedBlockConfig
from mmllm.errors import CheckpointError
from mmllm.model_file import frozen_keys, load_model_state_dict, model_state_dict
from mmllm.params import param_groups

VISUAL = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    return {arch: (root / arch, save_tiny(arch, root / arch)) for arch in ("llama", "opt")}


class Toy(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.stem = nn.Linear(4, VISUAL)
        self.llm_block = block
        self.head = nn.Linear(VISUAL, 3)

    def forward(self, x):
        return self.head(self.llm_block(self.stem(x)).mean(1))


def _train(model, steps=5, lr=1e-2):
    opt = torch.optim.AdamW(param_groups(model, lr=lr, weight_decay=0.1, lr_multipliers={"llm_block.adapter": 10}))
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(torch.randn(4, 6, 4)), torch.randint(0, 3, (4,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_frozen_weights_never_change_adapters_do(folders):
    folder, hf = folders["opt"]
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder), dtype="float32"))
    block.layers[0].dropout = 0.5  # even with dropout configured, a frozen block must not drop out
    model = Toy(block)
    frozen_before = {k: v.clone() for k, v in block.layers.state_dict().items()}
    adapter_before = block.adapter_in.weight.clone()
    opt = _train(model)
    for name, tensor in block.layers.state_dict().items():
        assert torch.equal(tensor, frozen_before[name]), name
        assert torch.equal(tensor, layer_state(hf, "opt", 3)[name.removeprefix("0.")]), name
    assert all(p.grad is None for p in block.layers.parameters())
    assert not torch.equal(block.adapter_in.weight, adapter_before)
    optimized = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in block.layers.parameters()}
    assert model.training and not block.layers.training
    x = torch.randn(2, 5, VISUAL)
    torch.testing.assert_close(block(x), block(x))  # no dropout in train mode


def test_adapter_lr_multiplier_groups(folders):
    folder, _ = folders["llama"]
    model = Toy(FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder))))
    groups = param_groups(model, lr=1e-3, weight_decay=0.05, lr_multipliers={"llm_block.adapter": 10})
    by_name = {n: g for g in groups for n in g["names"]}
    assert set(by_name) == {
        "stem.weight",
        "stem.bias",
        "llm_block.adapter_in.weight",
        "llm_block.adapter_out.weight",
        "head.weight",
        "head.bias",
    }
    assert by_name["llm_block.adapter_in.weight"]["lr"] == pytest.approx(1e-2)
    assert by_name["stem.weight"]["lr"] == pytest.approx(1e-3) and by_name["stem.weight"]["weight_decay"] == 0.05
    assert by_name["stem.bias"]["weight_decay"] == 0.0


def _trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_an_lr_multiplier_prefix_that_names_nothing_is_reported(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))  # names 0.weight ... 1.bias
    with caplog.at_level("INFO", logger="mmllm.params"):
        groups = param_groups(model, lr=1.0, lr_multipliers={"1.": 3.0, "backbone.text.": 0.1})
    assert sorted({g["lr"] for g in groups}) == [1.0, 3.0]  # the matching prefix applies; the other changes nothing
    # one dead prefix beside a live one (a config serving an arm without that part): info
    assert [(r.levelname, "'backbone.text.'" in r.getMessage()) for r in caplog.records] == [("INFO", True)]
    caplog.clear()
    with caplog.at_level("INFO", logger="mmllm.params"):  # none matches: written for another model, a warning
        param_groups(model, lr=1.0, lr_multipliers={"backbone.text.": 0.1, "backbone.llm_block.adapter": 2.0})
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "start with 0., 1." in record.getMessage()


def test_finetune_control_trains_the_block(folders):
    folder, hf = folders["llama"]
    block = build_block({"kind": "llm_block_finetuned", "source": str(folder), "dtype": "float32"}, VISUAL)
    assert isinstance(block.cfg, FinetunedBlockConfig) and not block.frozen
    before = block.layers[0].mlp.up_proj.weight.clone()
    assert torch.equal(before, layer_state(hf, "llama", 3)["mlp.up_proj.weight"])  # starts pretrained
    _train(Toy(block))
    assert not torch.equal(block.layers[0].mlp.up_proj.weight, before)
    assert frozen_keys(Toy(block)) == {"llm_block.final_norm.weight"}  # the unit norm stays constant


@pytest.mark.parametrize(
    "kind,config_class,trains",
    [("random_frozen", RandomFrozenBlockConfig, False), ("random_trained", RandomTrainedBlockConfig, True)],
)
def test_random_init_controls(folders, kind, config_class, trains):
    folder, hf = folders["llama"]
    torch.manual_seed(0)
    block = build_block({"kind": kind, "source": str(folder), "dtype": "float32"}, VISUAL)
    assert isinstance(block.cfg, config_class) and block.source_fingerprint is None
    w = block.layers[0].mlp.up_proj.weight.detach().clone()
    assert not torch.allclose(w, layer_state(hf, "llama", 3)["mlp.up_proj.weight"])
    assert abs(w.std().item() - hf.config.initializer_range) < 0.005  # the LLM's own init, N(0, 0.02)
    assert all(p.requires_grad == trains for p in block.layers.parameters())
    _train(Toy(block))
    assert torch.equal(block.layers[0].mlp.up_proj.weight, w) != trains
    # a random block cannot be rebuilt from its source, so a checkpoint keeps it
    assert not any(k.startswith("llm_block.layers.") for k in frozen_keys(Toy(block)))


def test_random_control_from_llm_config_without_weights():
    llm = {
        "model_type": "qwen2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 3,
    }
    block = build_block({"kind": "random_trained", "llm_config": llm, "layers": "-2:", "dtype": "float32"}, VISUAL)
    assert block.layer_indices == [1, 2] and block.hidden_size == 32
    assert block.layers[0].self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases
    out = block(torch.randn(2, 5, VISUAL), torch.tensor([[False] * 5, [False] * 3 + [True] * 2]))
    assert out.shape == (2, 5, VISUAL) and torch.all(out[1, 3:] == 0)


def test_mlp_control_has_equal_trainable_size(folders):
    folder, _ = folders["llama"]
    block = build_visual_llm_layer({"kind": "llm_block", "source": str(folder)}, VISUAL)
    mlp = build_visual_llm_layer({"kind": "mlp", "source": str(folder)}, VISUAL)
    # by hand: the block trains only its adapters, 16x48 in and 48x16 out (tiny LLaMA: hidden 48);
    # the MLP control has the same two adapters plus its LayerNorm's weight and bias (2 x 48)
    assert _trainable(block) == 16 * 48 + 48 * 16 == 1536
    assert isinstance(mlp, AdapterMLP) and _trainable(mlp) == 1536 + 2 * 48
    assert [type(m).__name__ for m in mlp.children()] == ["Linear", "GELU", "LayerNorm", "Linear"]
    x = torch.randn(2, 3, VISUAL)
    ln = torch.nn.functional.layer_norm
    want = ln(torch.nn.functional.gelu(x @ mlp.adapter_in.weight.T), (48,), mlp.norm.weight, mlp.norm.bias)
    torch.testing.assert_close(mlp(x), want @ mlp.adapter_out.weight.T)
    none = build_visual_llm_layer({"kind": "none"}, VISUAL)
    assert isinstance(none, NoBlock) and torch.equal(none(x), x)


def test_checkpoint_without_frozen_weights_round_trips(folders):
    folder, _ = folders["llama"]
    model = Toy(FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder))))
    _train(model, steps=2)
    state = model_state_dict(model)
    assert not any(k.startswith("llm_block.layers.") for k in state)
    assert "llm_block.adapter_in.weight" in state
    torch.manual_seed(123)
    fresh = Toy(FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder))))
    load_model_state_dict(fresh, state)
    x = torch.randn(2, 6, 4)
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), fresh(x))
    del state["head.weight"]
    with pytest.raises(CheckpointError, match="head.weight"):
        load_model_state_dict(fresh, state)


def test_checkpoint_from_other_llm_weights_is_refused(folders, tmp_path):
    folder, _ = folders["llama"]
    save_tiny("llama", tmp_path, seed=7)
    a = Toy(FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder))))
    b = Toy(FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(tmp_path))))
    from mmllm.model_file import block_fingerprints

    with pytest.raises(CheckpointError, match="different frozen LLM weights"):
        load_model_state_dict(b, model_state_dict(a), block_fingerprints(a))
