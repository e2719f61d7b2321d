"""The VectorNet-style model: padded vectors and polylines change nothing (sub-graph, global graph and the
block all see the mask), the block sits between the global graph and the decoder, the winner-takes-all
loss matches hand-computed values, and trajectories stay fp32 in a bf16 model."""

import math

import pytest
import torch
from tiny_llms import random_llama_block

from mmllm.engine.batch import move_batch
from vision.motion.model import create_vectornet_model, forecasting_loss
from vision.motion.task import MotionForecastingTask

TINY_BLOCK = random_llama_block()


def tiny_model(block=TINY_BLOCK):
    torch.manual_seed(0)
    return create_vectornet_model(
        {"hidden_dim": 16, "dim": 16, "num_heads": 2, "num_modes": 3, "global_layers": 2, "llm_block": block},
        pred_len=5,
    ).eval()


def tiny_batch():
    g = torch.Generator().manual_seed(1)
    av = torch.randn(2, 3, 19, 8, generator=g) * 5
    am = torch.ones(2, 3, 19, dtype=torch.bool)
    am[0, 2, :10] = False  # a track seen late
    am[1, 1:] = False  # scene 1 has only the focal agent
    lv = torch.randn(2, 4, 9, 8, generator=g) * 20
    lm = torch.ones(2, 4, 9, dtype=torch.bool)
    lm[0, 3, 4:] = False
    lm[1, 2:] = False  # scene 1 has two lanes
    av[~am] = 0.0
    lv[~lm] = 0.0
    return {"agent_vectors": av, "agent_vector_mask": am, "lane_vectors": lv, "lane_vector_mask": lm}


def padded(batch):
    """The same scenes with garbage in every padded slot and two extra, fully padded lanes."""
    g = torch.Generator().manual_seed(2)
    av, lv = batch["agent_vectors"].clone(), batch["lane_vectors"].clone()
    av[~batch["agent_vector_mask"]] = torch.randn(int((~batch["agent_vector_mask"]).sum()), 8, generator=g) * 1e3
    lv[~batch["lane_vector_mask"]] = torch.randn(int((~batch["lane_vector_mask"]).sum()), 8, generator=g) * 1e3
    lv = torch.cat([lv, torch.randn(2, 2, 9, 8, generator=g) * 1e3], dim=1)
    lm = torch.cat([batch["lane_vector_mask"], torch.zeros(2, 2, 9, dtype=torch.bool)], dim=1)
    return {**batch, "agent_vectors": av, "lane_vectors": lv, "lane_vector_mask": lm}


def test_padding_changes_nothing_and_the_block_sees_the_mask():
    model = tiny_model()
    batch = tiny_batch()
    seen = {}
    model.global_graph.register_forward_hook(lambda m, i, o: seen.__setitem__("global", o))
    model.llm_block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(block_in=args[0], pad=kwargs["padding_mask"]), with_kwargs=True
    )
    model.llm_block.register_forward_hook(lambda m, i, o: seen.__setitem__("block_out", o))
    model.decoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("decoder_in", args[0]))
    with torch.no_grad():
        traj, scores = model(batch)
        # the block takes the global graph's tokens with the polyline padding mask, the decoder its output
        assert torch.equal(seen["block_in"], seen["global"])
        assert seen["pad"].tolist() == [[False] * 7, [False, True, True, False, False, True, True]]
        assert torch.equal(seen["decoder_in"], seen["block_out"][:, 0])
        traj2, scores2 = model(padded(batch))
        assert seen["pad"].shape == (2, 9) and seen["pad"][:, 7:].all()
        torch.testing.assert_close(traj2, traj, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(scores2, scores, atol=1e-4, rtol=1e-4)
        # the check has teeth: unmasking one garbage lane changes the forecast
        loud = padded(batch)
        loud["lane_vector_mask"][:, 4, 0] = True
        assert not torch.allclose(model(loud)[0], traj, atol=1e-3)
    assert traj.shape == (2, 3, 5, 2) and scores.shape == (2, 3)


def test_gradients_reach_trainable_parts_only():
    model = tiny_model().train()
    batch = tiny_batch()
    traj, scores = model(batch)
    loss, _ = forecasting_loss(traj, scores, torch.randn(2, 5, 2))
    loss.backward()
    frozen = [p for n, p in model.named_parameters() if n.startswith("llm_block.layers")]
    assert frozen and all(not p.requires_grad and p.grad is None for p in frozen)
    assert model.llm_block.adapter_in.weight.grad.abs().sum() > 0
    assert model.agent_subgraph.layers[0][0].weight.grad.abs().sum() > 0
    assert model.lane_subgraph.layers[0][0].weight.grad.abs().sum() > 0


def test_winner_takes_all_loss_by_hand():
    target = torch.tensor([[[1.0, 0.0], [2.0, 0.0]]])
    traj = torch.tensor(
        [
            [
                [[1.5, 0.0], [2.5, 0.0]],  # errors .5, .5: best mean distance
                [[1.0, 0.0], [2.0, 3.0]],  # errors 0, 3
                [[1.0, 4.0], [2.0, 0.2]],
            ]
        ]
    )  # errors 4, .2: best final point
    loss, parts = forecasting_loss(traj, torch.zeros(1, 3), target, winner="fde")
    # smooth L1 (beta 1) of mode 2: elements 0, 4 -> 3.5, 0, .2 -> .02; mean 3.52 / 4; CE of uniform scores log 3
    assert parts["reg_loss"] == pytest.approx(0.88) and parts["cls_loss"] == pytest.approx(math.log(3))
    assert float(loss) == pytest.approx(0.88 + math.log(3))
    loss, parts = forecasting_loss(traj, torch.tensor([[2.0, 0.0, 0.0]]), target, winner="ade", cls_weight=0.5)
    # mode 0: elements .5 -> .125, 0, .125, 0; CE -log(e^2 / (e^2 + 2))
    assert parts["reg_loss"] == pytest.approx(0.0625)
    assert parts["cls_loss"] == pytest.approx(math.log(1 + 2 * math.exp(-2)))
    assert float(loss) == pytest.approx(0.0625 + 0.5 * math.log(1 + 2 * math.exp(-2)))


def test_trajectories_stay_fp32_in_a_bf16_model():
    model = tiny_model({"kind": "none"}).to(torch.bfloat16)
    batch = tiny_batch()
    moved = move_batch(batch, torch.device("cpu"), torch.bfloat16, MotionForecastingTask.compute_dtype_inputs)
    assert moved["agent_vectors"].dtype == torch.float32 and moved["lane_vectors"].dtype == torch.float32
    traj, scores = model(moved)
    assert traj.dtype == torch.float32 and scores.dtype == torch.float32 and torch.isfinite(traj).all()
