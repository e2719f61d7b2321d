"""The registry of block kinds: each kind is a config class plus a builder, registered once.

``build_block({"kind": K, ...options}, visual_dim)`` parses the options with kind K's own
config class (unknown options are errors that name the kind and the nearest known
option) and calls K's builder with the parsed config. New kinds register themselves with
``@register_block("name", TheirConfig)``; the module holding them is found without editing
a list: a module in the ``mmllm.blocks`` package, or a package advertising it through the
``mmllm.blocks`` entry-point group, is imported the first time an unregistered kind is asked
for (one at a time: a broken module is reported and skips only itself).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from torch import nn

from ..errors import ConfigError
from ..schema import suggest

ENTRY_POINT_GROUP = "mmllm.blocks"
DEFAULT_KIND = "llm_block"

PositiveInt = Annotated[int, Field(strict=True, gt=0)]

# options that no longer exist, and what replaced them
REMOVED_OPTIONS = {
    "init": "the random-init controls are kinds now: kind: random_trained (the paper's control, trained "
    "end to end) or kind: random_frozen",
    "frozen": "the fine-tuned control is a kind now: kind: llm_block_finetuned",
}


class BlockConfig(BaseModel):
    """Base of every kind's config: unknown options are errors, values are type-checked.

    ``visual_dim`` (the width of the host's tokens) is filled in by :func:`build_block`.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), arbitrary_types_allowed=True
    )
    kind: ClassVar[str] = ""  # set by register_block

    visual_dim: PositiveInt

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(describe(type(self), exc)) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockConfig:
        return cls(**plain(data))

    def to_dict(self) -> dict[str, Any]:
        """The options as a mapping ``build_block`` accepts (with ``kind``)."""
        return {"kind": self.kind, **self.model_dump()}


@dataclass(frozen=True)
class BlockKind:
    name: str
    config_class: type[BlockConfig]
    builder: Callable[[Any], nn.Module]
    ignores_foreign_options: bool = False


_KINDS: dict[str, BlockKind] = {}
_BROKEN: dict[str, str] = {}
_DISCOVERED = False


def register_block(kind: str, config_cls: type[BlockConfig], *, ignores_foreign_options: bool = False):
    """Decorator registering ``builder(config) -> nn.Module`` (a module class or a function) as ``kind``.

    ``ignores_foreign_options`` lets a kind accept, and ignore, options of other registered
    kinds (``none`` uses it, so ``kind=none`` switches any block config off).
    """
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ConfigError(f"block kind must be an identifier, got {kind!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, BlockConfig)):
        raise ConfigError(f"block kind {kind!r}: config class must subclass mmllm.blocks.BlockConfig")
    if config_cls.__dict__.get("kind") not in (None, "", kind):
        raise ConfigError(f"{config_cls.__name__} is already the config of block kind {config_cls.kind!r}")

    def decorator(builder: Callable[[Any], nn.Module]):
        old = _KINDS.get(kind)
        if old is not None and (old.builder, old.config_class) != (builder, config_cls):
            raise ConfigError(f"block kind {kind!r} is registered twice ({old.builder} and {builder})")
        config_cls.kind = kind
        _KINDS[kind] = BlockKind(kind, config_cls, builder, ignores_foreign_options)
        return builder

    return decorator


def _discover() -> None:
    """Import block modules of the mmllm.blocks package and of entry points, once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    package = importlib.import_module(__package__)
    targets = [f"{__package__}.{m.name}" for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    targets += [ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)]
    for target in targets:
        module, _, attr = target.partition(":")
        try:
            loaded = importlib.import_module(module)
            if attr:
                getattr(loaded, attr)()  # an entry point may name a function that registers kinds
        except Exception as exc:  # noqa: BLE001 - one broken kind must not hide the others
            _BROKEN[target] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"mmllm block module {target!r} failed to import: {exc}", stacklevel=3)


def block_kinds() -> list[str]:
    """Every registered kind, sorted."""
    _discover()
    return sorted(_KINDS)


def block_kind(kind: str) -> BlockKind:
    if kind not in _KINDS:
        _discover()
    if kind not in _KINDS:
        broken = f"; modules that failed to import: {_BROKEN}" if _BROKEN else ""
        raise ConfigError(
            f"unknown block kind {kind!r}{suggest(str(kind), list(_KINDS))}; known kinds: {sorted(_KINDS)}{broken}"
        )
    return _KINDS[kind]


def block_config_class(kind: str) -> type[BlockConfig]:
    return block_kind(kind).config_class


def parse_block_options(options: Mapping[str, Any] | None, visual_dim: int) -> BlockConfig:
    """The config of ``options["kind"]`` (default ``llm_block``; no options at all = ``none``)."""
    check_visual_dim(visual_dim)
    data = plain(options) if options else {"kind": "none"}
    kind = data.pop("kind", DEFAULT_KIND)
    entry = block_kind(kind)
    if "visual_dim" in data and data["visual_dim"] != visual_dim:
        raise ConfigError(
            f"block option visual_dim={data['visual_dim']!r} disagrees with the width of the tokens it "
            f"receives ({visual_dim}); leave visual_dim out, the host sets it"
        )
    data["visual_dim"] = visual_dim
    if entry.ignores_foreign_options:
        _discover()
        foreign = {k for other in _KINDS.values() if other is not entry for k in other.config_class.model_fields}
        data = {k: v for k, v in data.items() if k not in foreign or k in entry.config_class.model_fields}
    return entry.config_class(**data)


def checked_block_options(value: Any) -> dict[str, Any] | None:
    """A model section's ``llm_block``, validated once, when the section is parsed: its kind's own config class
    checks every option, and the section then holds the options with every default filled in (``kind``
    included; ``visual_dim`` left out, the host sets it when it builds the block)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"block options must be a mapping with a kind, got {type(value).__name__}")
    try:
        cfg = parse_block_options(value, visual_dim=1)  # the host's real width is set when it builds the block
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return {k: v for k, v in cfg.to_dict().items() if k != "visual_dim"}


BLOCK_OPTIONS_CHECK = BeforeValidator(checked_block_options)
# the type of a model section's block options: ``llm_block: BlockOptions = Field(None, ...)``
BlockOptions = Annotated[dict[str, Any] | None, BLOCK_OPTIONS_CHECK]


def is_block_options_field(field: Any) -> bool:
    """Whether a pydantic field is typed :data:`BlockOptions` (validated when its section is parsed)."""
    return any(m is BLOCK_OPTIONS_CHECK for m in getattr(field, "metadata", ()))


def build_block(options: Mapping[str, Any] | None, visual_dim: int) -> nn.Module:
    """The block described by ``options`` for tokens of width ``visual_dim`` (see the package docstring)."""
    cfg = parse_block_options(options, visual_dim)
    return block_kind(cfg.kind).builder(cfg)


def check_visual_dim(visual_dim: Any, name: str = "visual_dim") -> int:
    if isinstance(visual_dim, bool) or not isinstance(visual_dim, int) or visual_dim <= 0:
        raise ConfigError(f"{name} must be a positive int, got {visual_dim!r} ({type(visual_dim).__name__})")
    return visual_dim


# -- helpers -----------------------------------------------------------------------------


def plain(data: Any) -> Any:
    """Mappings and lists (OmegaConf containers included) as plain dicts and lists, recursively."""
    if isinstance(data, Mapping):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes, range)):
        return [plain(v) for v in data]
    return data


def describe(cls: type[BlockConfig], exc: ValidationError) -> str:
    """One readable clause per problem, naming the kind and (for unknown options) the nearest known one."""
    kind = cls.kind or cls.__name__
    known = sorted(cls.model_fields)
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            name = str(err["loc"][0])
            if name in REMOVED_OPTIONS:
                lines.append(f"block kind {kind!r}: option {name!r} was removed: {REMOVED_OPTIONS[name]}")
                continue
            owners = sorted(k.name for k in _KINDS.values() if name in k.config_class.model_fields)
            where = f"; it is an option of kind(s) {owners}" if owners else ""
            lines.append(
                f"block kind {kind!r} has no option {name!r}{suggest(name, known)}{where}; options of {kind!r}: {known}"
            )
        elif err["type"] == "value_error" and not err["loc"]:
            lines.append(f"block kind {kind!r}: {err['ctx']['error']}")
        else:
            message = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
            lines.append(f"block kind {kind!r}: option {loc!r}: {message} (got {err.get('input')!r})")
    return "; ".join(lines)
