"""Typed config sections: every option declared once, with its type, default and a one-line doc.

A config section (``run``, ``model``, ``datasets.<name>``) is parsed into a pydantic model
that forbids unknown keys, so ``run.max_stpes`` is an error that suggests ``max_steps``
instead of passing silently, and ``run.max_steps=abc`` names the key and the type it wants.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """Base of every typed config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def parse(cls: type[S], data: Mapping[str, Any] | None, where: str) -> S:
        """``data`` as this section, or a ConfigError naming ``where.key`` (and the nearest known key)."""
        data = dict(data or {})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(describe_errors(cls, exc, where)) from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ModelSection(Section):
    """Keys LAVIS puts in every model section; tasks extend this with their own."""

    arch: str | None = None
    model_type: str | None = None


class DataSection(Section):
    """Keys LAVIS or our engine put in every dataset section; tasks extend this with their own."""

    data_type: str | None = None
    build_info: dict[str, Any] | None = None
    vis_processor: dict[str, Any] | None = None
    text_processor: dict[str, Any] | None = None
    prepare: str | None = None  # embedded-data preparer (registry) run on first use
    root: str | None = None  # where `prepare` writes


def known_keys(cls: type[BaseModel]) -> list[str]:
    return sorted(cls.model_fields)


def describe_errors(cls: type[BaseModel], exc: ValidationError, where: str) -> str:
    """One readable line per problem: ``run.max_stpes: unknown key (did you mean 'max_steps'?)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{where}.{loc}" if loc else where
        if err["type"] == "extra_forbidden":
            name = str(err["loc"][-1])
            lines.append(f"{key}: unknown key{suggest(name, known_keys(_model_at(cls, err['loc'][:-1])))}")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The nested section class at ``loc`` (for suggestions inside sub-sections)."""
    current: Any = cls
    for part in loc:
        field = getattr(current, "model_fields", {}).get(str(part))
        if field is None:
            break
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nested is None:
            break
        current = nested
    return current if isinstance(current, type) and issubclass(current, BaseModel) else cls


def suggest(name: str, known: list[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` or an empty string: the one "did you mean" of every error about a name."""
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""
