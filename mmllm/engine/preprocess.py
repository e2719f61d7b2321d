"""What a task's :meth:`~mmllm.engine.task.Task.build_preprocess` returns: its preprocessing, typed.

    def build_preprocess(self) -> Preprocess:
        transform = image_transform(*vision_input_spec(self.model_cfg.vision))
        return Preprocess(train=transform, eval=transform, tokenizer=build_tokenizer(self.model_cfg.text))

``mmllm.create_model_and_transforms`` hands out ``(model, train, eval, tokenizer)`` from it and LAVIS's
processors call its transforms; nothing reads a task's attributes by name. The task keeps it
(``task.preprocess``), so a task's ``build_datasets``/``collate`` use the very transforms handed out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preprocess:
    """A task's preprocessing, built from the config alone (never from data or the model).

    ``train``/``eval``: the input transforms of training and evaluation (for images: a PIL image ->
    the [3, H, W] tensor the model takes; the action task's clip transform object; None for inputs
    that need none: point clouds, trajectories, 3D scenes). ``tokenizer``: a Hugging Face tokenizer
    (call it on a list of strings with ``return_tensors="pt"``), or None for a task without text.
    """

    train: Callable | Any | None = None
    eval: Callable | Any | None = None
    tokenizer: Any = None

    @classmethod
    def shared(cls, transform: Callable | Any | None, tokenizer: Any = None) -> Preprocess:
        """One transform for training and evaluation (tasks that augment nothing)."""
        return cls(train=transform, eval=transform, tokenizer=tokenizer)
