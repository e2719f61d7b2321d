"""Every registered task (:mod:`mmllm.engine.registry`) presented to LAVIS as a model, a task and a
dataset builder, generically: this module never names a task.

LAVIS builds datasets before the model (``setup_task -> build_datasets -> build_model``). Our
tasks build their preprocessing from the config alone, so datasets come first here too, and
the model is built once, by :func:`mmllm.engine.trainer.build_model` (which applies
``run.init_from``). Batches are collated by our task (LAVIS calls ``dataset.collater``).

LAVIS's inference API works too: ``load_model_and_preprocess(name=<arch>, model_type="default")``
builds the model from the arch's default model config (its ``model`` section over the task's
registered config, whose ``datasets`` give data-sized parts such as VQA's answer vocabulary;
``model.finetuned: <model_final.pt>`` loads a trained run with the config stored in it) and the
processors named in the file's ``preprocess`` section. Each task's processors are registered
as ``<arch>_image_train``, ``<arch>_image_eval`` (the task's own image transforms, from
:meth:`Task.build_preprocess`) and ``<arch>_text`` (a string check: tokenizing is the model's
job, as in LAVIS). A task with an ``answer_questions(model, images, questions)`` method gives
its LAVIS model ``predict_answers(samples)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from ..config import load_yaml
from ..engine.registry import TaskEntry, all_tasks, build_task
from ..errors import ConfigError
from .compat import import_lavis

log = logging.getLogger(__name__)
_REGISTERED: set[str] = set()


def native_config(lavis_cfg) -> DictConfig:
    """LAVIS ``Config`` (or an OmegaConf with model/datasets/run) -> our task config."""
    node = getattr(lavis_cfg, "config", lavis_cfg)
    return OmegaConf.create({"model": node.model, "datasets": node.datasets, "run": node.run})


class LavisDataset(Dataset):
    """One split of our data as LAVIS expects it: indexable, sized, with ``collater``."""

    def __init__(self, dataset, collater: Callable | None):
        self.dataset = dataset
        self.collater = collater

    def __len__(self) -> int:
        return len(self.dataset)  # every split is sized (evaluation splits: mmllm.engine.splits.EvalSplit)

    def __getitem__(self, i):
        return self.dataset[i]


def _minimal_default(name: str, content: dict) -> Path:
    """LAVIS loads a default config file for every model type and builder; a task that ships none
    (registered from user code) gets one naming only what LAVIS requires."""
    import tempfile

    import yaml

    from ..jsonio import atomic_write_text

    folder = Path(tempfile.gettempdir()) / "mmllm_lavis_defaults"
    folder.mkdir(exist_ok=True)
    path = folder / name
    text = yaml.safe_dump(content)
    if not path.is_file() or path.read_text() != text:  # atomic: every rank of a launcher writes it
        atomic_write_text(path, text)
    return path


WEIGHT_KEYS = ("finetuned", "pretrained", "load_finetuned", "load_pretrained")  # LAVIS's, not our model options


def default_preprocess(arch: str, model_type: str = "default") -> dict[str, Any]:
    """The ``preprocess`` section naming an arch's registered processors (LAVIS's layout); the image
    processors follow the config of ``model_type`` (its image size and normalisation)."""
    image = {
        "train": {"name": f"{arch}_image_train", "model_type": model_type},
        "eval": {"name": f"{arch}_image_eval", "model_type": model_type},
    }
    return {
        "vis_processor": image,
        "text_processor": {"train": {"name": f"{arch}_text"}, "eval": {"name": f"{arch}_text"}},
    }


def _default_section(entry: TaskEntry, key: str, name: str, minimal: dict) -> Path:
    """A LAVIS default file holding only ``key`` of the task's registered config (``minimal`` without one).
    LAVIS merges a model's and a builder's default file over the user's config, so the whole registered
    config there would put its ``run`` and other sections over the user's own."""
    if entry.default_config is not None:
        try:
            section = load_yaml(entry.default_config).get(key)  # its _base_ files composed (mmllm.config)
        except Exception as exc:  # noqa: BLE001 - one task's broken file must not stop the others registering
            log.warning("LAVIS: %s of task %r cannot be read (%s)", entry.default_config, entry.name, exc)
            section = None
        if section is not None:
            minimal = (
                OmegaConf.to_container(section)
                if key == "model"
                else {entry.dataset: OmegaConf.to_container(section.get(entry.dataset, {"data_type": "images"}))}
            )
    return _minimal_default(name, {key: minimal})


def _with_preprocess(entry: TaskEntry, path: Path) -> Path:
    """``path`` itself if it has a ``preprocess`` section (LAVIS's load_model_and_preprocess reads it),
    else a copy with the arch's default one."""
    try:
        raw = OmegaConf.load(path)
    except Exception as exc:  # noqa: BLE001 - one task's missing/broken file must not stop the others registering
        log.warning(
            "LAVIS: %s of task %r cannot be read (%s); its model is registered without processors",
            path,
            entry.name,
            exc,
        )
        return Path(path)
    if "preprocess" in raw:
        return Path(path)
    raw = OmegaConf.to_container(raw)
    raw["preprocess"] = default_preprocess(entry.model_arch)
    return _minimal_default(f"{entry.model_arch}_model_with_preprocess.yaml", raw)


def task_config(entry: TaskEntry, model_config: str | Path) -> DictConfig:
    """The full task config a LAVIS model type stands for: a stored run for ``model.finetuned``,
    else the file's ``model`` section over the task's registered config (or the file itself when it
    has ``datasets`` and ``run``)."""
    from ..config import load_config
    from ..model_file import read_model_file

    raw = load_yaml(model_config)
    model = raw.get("model") or {}
    if model.get("finetuned") and model.get("load_finetuned", True):
        return OmegaConf.create(read_model_file(model["finetuned"])["config"])
    if "datasets" in raw and "run" in raw:
        base = OmegaConf.create({k: raw[k] for k in ("model", "datasets", "run")})
    elif entry.default_config is not None:
        base = load_config(entry.default_config)
    else:
        raise ConfigError(
            f"{model_config}: model {entry.model_arch!r} needs a full task config (model, datasets, "
            f"run) or model.finetuned, because task {entry.name!r} registers no default config"
        )
    section = {k: v for k, v in OmegaConf.to_container(model).items() if k not in WEIGHT_KEYS}
    cfg = OmegaConf.merge(base, {"model": section})
    cfg.run.task = entry.name
    return cfg


_PREPROCESS_TASKS: dict[tuple[str, str], Any] = {}


def _preprocess_task(entry: TaskEntry, model_config: str):
    """The task of a model config with its preprocessing built (no data read, no model built); cached."""
    key = (entry.name, model_config)
    if key not in _PREPROCESS_TASKS:
        task = entry.build(task_config(entry, model_config))
        task.build_preprocess()
        _PREPROCESS_TASKS[key] = task
    return _PREPROCESS_TASKS[key]


def _register_processors(entry: TaskEntry, registry) -> None:
    """``<arch>_image_train``/``_image_eval``/``_text``: the task's own preprocessing as LAVIS processors."""
    BaseProcessor = sys.modules["lavis.processors.base_processor"].BaseProcessor

    class TaskProcessor(BaseProcessor):
        """Calls one of the task's transforms; identity (LAVIS's BaseProcessor) for a task without one."""

        part = "eval"

        def __init__(self, transform: Callable | None = None):
            super().__init__()
            if transform is not None:
                self.transform = transform

        @classmethod
        def from_config(cls, cfg=None):
            model_type = (cfg.get("model_type") if cfg is not None else None) or "default"
            path = registry.get_model_class(entry.model_arch).default_config_path(model_type)
            preprocess = _preprocess_task(entry, str(path)).preprocess  # the task's typed Preprocess
            return cls(preprocess.train if cls.part == "train" else preprocess.eval)

    class ImageTrain(TaskProcessor):
        part = "train"

    class Text(BaseProcessor):
        """Questions/captions pass as strings: the task's tokenizer runs inside the model's calls."""

        @classmethod
        def from_config(cls, cfg=None):
            return cls()

        def __call__(self, text):
            if not isinstance(text, str):
                raise ConfigError(f"{entry.model_arch}_text takes a string, got {type(text).__name__}")
            return text

    for name, cls in (
        (f"{entry.model_arch}_image_train", ImageTrain),
        (f"{entry.model_arch}_image_eval", TaskProcessor),
        (f"{entry.model_arch}_text", Text),
    ):
        if name not in registry.mapping["processor_name_mapping"]:
            registry.register_processor(name)(cls)


def register(entry: TaskEntry) -> None:
    """Register ``entry``'s model arch, task, dataset builder and processors in LAVIS's registry (idempotent)."""
    if entry.name in _REGISTERED:
        return
    registry = import_lavis().registry
    BaseModel = sys.modules["lavis.models.base_model"].BaseModel
    BaseTask = sys.modules["lavis.tasks.base_task"].BaseTask
    BaseDatasetBuilder = sys.modules["lavis.datasets.builders.base_dataset_builder"].BaseDatasetBuilder
    model_config = entry.lavis_model_config or _default_section(
        entry, "model", f"{entry.model_arch}_model.yaml", {"arch": entry.model_arch, "model_type": "default"}
    )
    model_config = _with_preprocess(entry, model_config)
    _register_processors(entry, registry)
    dataset_config = entry.lavis_dataset_config or _default_section(
        entry, "datasets", f"{entry.dataset}_dataset.yaml", {entry.dataset: {"data_type": "images"}}
    )

    class Model(BaseModel):
        PRETRAINED_MODEL_CONFIG_DICT = {"default": str(model_config)}

        def __init__(self, net, task=None):
            super().__init__()
            self.net = net
            self.task = task

        @classmethod
        def from_pretrained(cls, model_type):
            """LAVIS's entry (``load_model``, ``load_model_and_preprocess``): the whole model config
            file, not only its ``model`` section, since our tasks size models from their data."""
            return cls.from_config(OmegaConf.create({"config_path": cls.default_config_path(model_type)}))

        @classmethod
        def from_config(cls, cfg):
            """The model of a default model config (``cfg.config_path``), built by its task as
            ``mmllm train`` builds it, with the ``model.finetuned`` weights if the file names them.

            Inside a LAVIS training run the task builds the model instead (``Task.build_model``)."""
            from ..engine.launch import prepare_embedded_data
            from ..engine.trainer import build_model
            from ..model_file import load_model_file

            path = cfg.get("config_path") if hasattr(cfg, "get") else None
            if path is None:
                raise ConfigError(
                    f"{entry.model_arch} is built by its task {entry.name!r} (run.task) in training, "
                    "or by load_model_and_preprocess from its default model config"
                )
            full = task_config(entry, path)
            task = entry.build(full)
            prepare_embedded_data(full)
            task.build_preprocess()
            net = build_model(task)
            finetuned = load_yaml(path).get("model", {}).get("finetuned")
            if finetuned:
                load_model_file(net, finetuned)
            return cls(net, task)

        def load_checkpoint(self, url_or_filename):
            """``load_model(..., checkpoint=<model_final.pt>)``: our model files (frozen LLM weights
            are checked by fingerprint, not stored), strict on every trainable tensor."""
            from ..model_file import load_model_file

            return load_model_file(self.net, url_or_filename)

        def predict_answers(self, samples, inference_method="generate", answer_list=None, **kwargs):
            """LAVIS's VQA call: ``samples["image"]`` (processed, stacked) and ``samples["text_input"]``
            (questions) -> one answer string per question. Our VQA heads classify over the answer
            vocabulary: beam/length options have nothing to decode and are accepted for LAVIS's
            signature; a restricting ``answer_list`` is refused rather than ignored."""
            answer = getattr(self.task, "answer_questions", None)
            if answer is None:
                raise ConfigError(
                    f"{entry.model_arch}: task {entry.name!r} does not answer questions (no answer_questions method)"
                )
            if answer_list is not None:
                raise ConfigError(
                    f"{entry.model_arch}.predict_answers: answer_list (LAVIS's rank mode) is not "
                    "supported; answers come from the model's own answer vocabulary"
                )
            images, questions = samples["image"], samples["text_input"]
            if isinstance(questions, str):
                questions = [questions]
            if len(questions) != len(images):
                raise ConfigError(f"predict_answers: {len(images)} images but {len(questions)} questions")
            return answer(self.net, images, list(questions))

        def forward(self, samples):
            if self.task is None:
                raise ConfigError(f"{entry.model_arch} computes its loss through task {entry.name!r}")
            loss, logs = self.task.training_loss(self.net, samples)
            return {"loss": loss, **{k: v for k, v in logs.items() if "loss" in k}}

    class Task(BaseTask):
        def __init__(self, cfg):
            super().__init__()
            self.ours = build_task(native_config(cfg))  # run.task's benchmark x model.arch (LAVIS's axes)
            self.model = None
            self.splits: dict[str, Any] = {}
            self._eval_split = None

        @classmethod
        def setup_task(cls, cfg, **kwargs):
            return cls(cfg)

        def build_datasets(self, cfg):
            self.ours.build_preprocess()
            self.splits = self.ours.build_datasets()
            wrapped = {name: LavisDataset(ds, self.ours.collate) for name, ds in self.splits.items()}
            return {entry.dataset: wrapped}

        def build_model(self, cfg):
            from ..engine.trainer import build_model

            if self.model is None:
                if not self.splits:
                    raise ConfigError("LAVIS built the model before the datasets; call build_datasets first")
                self.model = Model(build_model(self.ours), self.ours)
            return self.model

        def before_evaluation(self, model, dataset, **kwargs):
            target = dataset.dataset if isinstance(dataset, LavisDataset) else dataset
            self._eval_split = next((n for n, d in self.splits.items() if d is target), "eval")

        def evaluation(self, model, data_loader, cuda_enabled=None):
            from ..engine import distributed

            net = model.net if hasattr(model, "net") else model.module.net
            split = self._eval_split or "eval"
            out_dir = Path(self.ours.run.output_dir)
            if distributed.is_main():
                out_dir.mkdir(parents=True, exist_ok=True)
            return self.ours.evaluate(net, self.splits[split], split, out_dir)

        def after_evaluation(self, val_result, split_name, epoch, **kwargs):
            metrics = dict(val_result)
            main = metrics.get(self.ours.main_metric, 0.0)
            metrics["agg_metrics"] = main if self.ours.higher_is_better else -main  # LAVIS keeps the largest
            return metrics

    class Builder(BaseDatasetBuilder):
        DATASET_CONFIG_DICT = {"default": str(dataset_config)}

        def build_datasets(self):
            raise ConfigError(f"{entry.dataset} datasets are built by task {entry.name!r} (run.task)")

    registry.register_model(entry.model_arch)(Model)
    registry.register_task(entry.name)(Task)
    if entry.dataset not in registry.mapping["builder_name_mapping"]:  # one builder per benchmark, for all its models
        registry.register_builder(entry.dataset)(Builder)
    _REGISTERED.add(entry.name)


def register_all() -> list[TaskEntry]:
    """Register every task of our registry in LAVIS's, and our DeepSpeed runner."""
    entries = list(all_tasks().values())
    for entry in entries:
        register(entry)
    from .runner import register_runner

    register_runner()
    return entries
