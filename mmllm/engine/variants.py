"""Every variant a run can take, defined in one place: what `mmllm main`, the projects' `main.py` and
`mmllm sweep` train.

Three sources, looked up in this order: the task's own variants (:attr:`TaskEntry.variants`, e.g. LLaViT's
switches; by default ``block`` and ``no_block``), the standard set below (the paper's controls and the LLM layer,
on any task whose config has a ``model.llm_block``), and the insertion depths in the host encoder
(``depth_head/middle/tail``, from the task's :class:`~mmllm.engine.registry.InsertionDepths`; the paper's
Table D). A variant is a tuple of config overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .registry import TaskEntry

NO_BLOCK = "model.llm_block.kind=none"
BLOCK = "model.llm_block.kind=llm_block"
# name -> config overrides; every key here is sweepable on any task whose config has a `model.llm_block`
STANDARD_VARIANTS: dict[str, tuple[str, ...]] = {
    "none": (NO_BLOCK,),  # the baseline every row is paired with
    "frozen": (BLOCK,),  # the method: pretrained, frozen
    "finetuned": ("model.llm_block.kind=llm_block_finetuned",),  # pretrained, trained end to end
    "random_trained": ("model.llm_block.kind=random_trained",),  # the paper's random-init control (App. B.2)
    "random_frozen": ("model.llm_block.kind=random_frozen",),
    "mlp": ("model.llm_block.kind=mlp",),  # GELU + LayerNorm between the adapters (§5.1)
    "layer_last": (BLOCK, "model.llm_block.layers=last"),  # which LLM layer (the paper's Fig. 2)
    "layer_middle": (BLOCK, "model.llm_block.layers=middle"),
    "layer_first": (BLOCK, "model.llm_block.layers=first"),
    "layer_last_two": (BLOCK, "model.llm_block.layers=[-2,-1]"),
}
DEPTHS = ("head", "middle", "tail")  # depth_<name>: where in the host encoder (the paper's Table D)


def task_variants(
    entry: TaskEntry, base_cfg: DictConfig, names: Mapping[str, Sequence[str] | None]
) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(variant -> overrides this task can run, variant -> why it cannot) for one task: ``names`` maps each
    wanted variant to its own overrides, or None for the named variant of the task's entry, of the standard
    set or of the task's insertion depths (in that order). ``why`` is ``"unknown"`` for a name none knows."""
    from omegaconf import OmegaConf

    has_block = OmegaConf.select(base_cfg, "model.llm_block", default=None) is not None
    depths: dict[str, tuple[str, ...]] = {}
    depth_problem = f"task {entry.name} declares no insertion depths (TaskEntry.insertion_depths)"
    if entry.insertion_depths is not None:
        try:
            depths = {f"depth_{k}": (BLOCK, *v) for k, v in entry.insertion_depths.overrides(base_cfg).items()}
        except ConfigError as exc:
            depth_problem = str(exc)
    ok: dict[str, tuple[str, ...]] = {}
    skipped: dict[str, str] = {}
    for name, own in names.items():
        if own is not None:
            ok[name] = tuple(own)
        elif name in entry.variants:
            ok[name] = tuple(entry.variants[name])
        elif name in STANDARD_VARIANTS or name in {f"depth_{d}" for d in DEPTHS}:
            if not has_block:
                skipped[name] = f"task {entry.name}'s config has no model.llm_block"
            elif name in STANDARD_VARIANTS:
                ok[name] = STANDARD_VARIANTS[name]
            elif name in depths:
                ok[name] = depths[name]
            else:
                skipped[name] = (
                    f"{entry.name} has no {name} ({', '.join(sorted(depths))} only)" if depths else depth_problem
                )
        else:
            skipped[name] = "unknown"
    return ok, skipped


def known_names(entry: TaskEntry) -> list[str]:
    """Every variant name ``entry`` may be asked for (whether its config can take it is checked on use)."""
    return sorted({*entry.variants, *STANDARD_VARIANTS, *(f"depth_{d}" for d in DEPTHS)})
