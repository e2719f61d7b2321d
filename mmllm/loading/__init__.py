"""Find out what a checkpoint source is and read only the layers we need from it.

A source is a Hugging Face model folder, a ``.gguf`` file, a LLaMA-v1 folder
(``params.json`` + ``consolidated.*.pth``), or the name of an embedded asset
(see :mod:`mmllm.assets`). Nothing is ever downloaded.
"""
from __future__ import annotations

from pathlib import Path

from transformers import PretrainedConfig

from ..architectures import ArchitectureSpec, spec_for_config
from ..errors import CheckpointError
from . import gguf_file, hf_folder, llama_v1
from .weights import LayerWeights, check_tensors, expected_shapes, final_norm_template, layer_template

__all__ = ["LayerWeights", "resolve_source", "read_config", "load_layer_weights"]


def resolve_source(source: str | Path) -> tuple[str, Path]:
    """(format, local path) of a source; embedded asset names are prepared on first use."""
    from .. import assets

    text = str(source)
    if text in assets.ASSETS:
        return "hf", assets.prepare(text)
    path = Path(text).expanduser()
    if gguf_file.is_gguf_file(path):
        return "gguf", path
    if llama_v1.is_llama_v1_folder(path):
        return "llama_v1", path
    if hf_folder.is_hf_folder(path):
        return "hf", path
    if not path.exists():
        raise CheckpointError(
            f"LLM source {text!r} is neither an existing path nor an embedded asset "
            f"({', '.join(assets.ASSETS)}); nothing is downloaded at run time"
        )
    raise CheckpointError(
        f"{path}: not a recognised checkpoint (expected a .gguf file, a folder with config.json, "
        "or a LLaMA folder with params.json + consolidated.*.pth)"
    )


def read_config(source: str | Path) -> PretrainedConfig:
    fmt, path = resolve_source(source)
    reader = {"hf": hf_folder.read_config, "gguf": gguf_file.read_config, "llama_v1": llama_v1.read_config}[fmt]
    return reader(path)


def load_layer_weights(
    source: str | Path,
    layer_indices: list[int],
    with_final_norm: bool,
    config: PretrainedConfig | None = None,
) -> LayerWeights:
    """Tensors of ``layer_indices`` (and the final norm if asked), checked against the config."""
    fmt, path = resolve_source(source)
    if config is None:
        config = read_config(source)
    spec: ArchitectureSpec = spec_for_config(config)
    if fmt == "llama_v1" and spec.name != "llama":
        raise CheckpointError(f"{path}: params.json folders hold LLaMA weights only")
    expected = {i: expected_shapes(layer_template(spec, config, i)) for i in layer_indices}
    names = {i: list(shapes) for i, shapes in expected.items()}
    norm_expected = expected_shapes(final_norm_template(spec, config)) if with_final_norm else None
    norm_names = list(norm_expected) if norm_expected is not None else None
    if fmt == "hf":
        layers, final = hf_folder.read_tensors(path, spec, names, norm_names)
    elif fmt == "gguf":
        layers, final = gguf_file.read_tensors(path, spec, config, names, norm_names)
    else:
        layers, final = llama_v1.read_tensors(path, config, names, norm_names)
    checked = {i: check_tensors(layers[i], expected[i], f"layer {i}", str(path)) for i in layer_indices}
    if norm_expected is not None:
        final = check_tensors(final or {}, norm_expected, "final norm", str(path))
    return LayerWeights(config=config, layers=checked, final_norm=final, source=str(path))
