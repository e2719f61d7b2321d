"""The one place where mmllm works around salesforce-lavis 1.0.2 on a modern stack.

LAVIS 1.0.2 (2023) is installed with ``pip install --no-deps salesforce-lavis==1.0.2``: its
pins (transformers<4.27, timm==0.4.12) conflict with transformers 5 and open_clip 3. Two
things break, and both are handled here at run time (nothing in site-packages is edited):

1. ``import lavis`` runs ``lavis/__init__.py``, which imports LAVIS's whole model zoo
   (BLIP, ALBEF, Q-Former ...); on transformers 5 that fails. We only need LAVIS's
   framework: the registry, ``Config``, ``BaseModel``, ``BaseTask``, ``BaseDatasetBuilder``,
   ``RunnerBase`` and the LR schedulers. :func:`import_lavis` registers bare package
   objects for ``lavis`` and its sub-packages (so their ``__init__`` files are not run),
   imports those framework modules normally from disk, and puts on the bare packages the
   three names the registry's decorators import from them (``BaseModel``,
   ``BaseProcessor``, ``BaseTask``). Its runtime imports ``decord``, ``iopath`` and
   ``webdataset`` (dependencies in pyproject.toml).
2. ``RunnerBase`` assumes CUDA. :func:`patch_runner_for_cpu` fixes, on CPU only:
   the ``model`` property (returns None when the model is already on the device; DDP
   gets ``device_ids`` only for GPUs), ``PrefetchLoader`` (creates a CUDA stream),
   ``SmoothedValue.synchronize_between_processes`` (tensor on ``"cuda"``),
   ``init_distributed_mode`` (nccl, ``torch.cuda.set_device``; and no process group at all
   for one process, while ``RunnerBase.train`` calls ``dist.barrier()``), and
   ``BaseTask.evaluation`` (moves batches to CUDA by default).

3. Because ``lavis/models/__init__.py`` and ``lavis/processors/__init__.py`` are skipped, the
   user-facing functions they define (``load_model``, ``load_preprocess``,
   ``load_model_and_preprocess``, ``load_processor``) would be missing from ``lavis.models`` /
   ``lavis.processors``. :func:`_install_loaders` compiles exactly those function definitions
   from LAVIS's own files (found by name with ``ast``; their other top-level statements, the zoo
   imports, are not run) into the bare packages, so
   ``from lavis.models import load_model_and_preprocess`` is LAVIS's own code.

``tests/test_lavis.py`` fails if any of these import paths or patched names move.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import sys
import types
from pathlib import Path

from ..errors import MMLLMError

PIP = "pip install --no-deps salesforce-lavis==1.0.2"
_SUBPACKAGES = (
    "",
    ".common",
    ".models",
    ".datasets",
    ".datasets.builders",
    ".datasets.datasets",
    ".processors",
    ".tasks",
    ".runners",
)
FRAMEWORK_MODULES = (
    "lavis.common.registry",
    "lavis.common.config",
    "lavis.common.dist_utils",
    "lavis.common.logger",
    "lavis.common.optims",
    "lavis.models.base_model",
    "lavis.processors.base_processor",
    "lavis.tasks.base_task",
    "lavis.datasets.builders.base_dataset_builder",
    "lavis.datasets.datasets.dataloader_utils",
    "lavis.runners.runner_base",
)
_STATE = {"imported": False, "patched": False}
# package -> the functions of its (skipped) __init__.py that users import from it
LOADERS = {
    "lavis.models": ("load_model", "load_preprocess", "load_model_and_preprocess"),
    "lavis.processors": ("load_processor",),
}


def _install_loaders(root: Path) -> None:
    """LAVIS's loader functions, compiled from its own ``__init__`` files, on the bare packages."""
    import torch
    from omegaconf import OmegaConf

    registry = sys.modules["lavis.common.registry"].registry
    base_processor = sys.modules["lavis.processors.base_processor"].BaseProcessor
    for package, names in LOADERS.items():
        module = sys.modules[package]
        if all(hasattr(module, n) for n in names):
            continue
        path = root / package.removeprefix("lavis.").replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        defs = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
        missing = set(names) - {d.name for d in defs}
        if missing:
            raise MMLLMError(f"{path}: LAVIS functions {sorted(missing)} not found (not LAVIS 1.0.2?); {PIP}")
        namespace = module.__dict__
        namespace.update(
            registry=registry, BaseProcessor=base_processor, OmegaConf=OmegaConf, torch=torch, logging=logging
        )
        exec(compile(ast.Module(body=defs, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102


def lavis_root() -> Path:
    loaded = sys.modules.get("lavis")
    if loaded is not None and getattr(loaded, "__path__", None):  # our bare package has no __spec__
        return Path(list(loaded.__path__)[0])
    spec = importlib.util.find_spec("lavis")
    if spec is None or not spec.submodule_search_locations:
        raise MMLLMError(f"LAVIS is not installed: {PIP}")
    return Path(list(spec.submodule_search_locations)[0])


def import_lavis() -> types.ModuleType:
    """LAVIS's registry module, with the framework imported and LAVIS's global paths registered."""
    if _STATE["imported"]:
        return sys.modules["lavis.common.registry"]
    root = lavis_root()
    for sub in _SUBPACKAGES:
        name = "lavis" + sub
        existing = sys.modules.get(name)
        if existing is not None and getattr(existing, "__file__", None):
            continue  # the real package is already imported (e.g. an older transformers): use it
        package = types.ModuleType(name)
        package.__path__ = [str(root / sub.lstrip(".").replace(".", "/"))]
        package.__package__ = name
        sys.modules[name] = package
    for module in FRAMEWORK_MODULES:
        importlib.import_module(module)
    # names the registry's decorators import from the (skipped) package __init__ files
    sys.modules["lavis.models"].BaseModel = sys.modules["lavis.models.base_model"].BaseModel
    sys.modules["lavis.processors"].BaseProcessor = sys.modules["lavis.processors.base_processor"].BaseProcessor
    sys.modules["lavis.tasks"].BaseTask = sys.modules["lavis.tasks.base_task"].BaseTask
    registry = sys.modules["lavis.common.registry"].registry
    # what lavis/__init__.py would have registered
    for key, value in (
        ("library_root", str(root)),
        ("repo_root", str(root.parent)),
        ("cache_root", str(Path.cwd() / "cache")),
    ):
        if key not in registry.mapping["paths"]:
            registry.register_path(key, value)
    if "MAX_INT" not in registry.mapping["state"]:
        registry.register("MAX_INT", sys.maxsize)
        registry.register("SPLIT_NAMES", ["train", "val", "test"])
    _install_loaders(root)
    _STATE["imported"] = True
    return sys.modules["lavis.common.registry"]


def patch_runner_for_cpu() -> None:
    """Make LAVIS's RunnerBase and BaseTask run without CUDA (no effect on their GPU behaviour)."""
    if _STATE["patched"]:
        return
    import_lavis()
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    runner_base = sys.modules["lavis.runners.runner_base"]
    logger = sys.modules["lavis.common.logger"]
    dist_utils = sys.modules["lavis.common.dist_utils"]
    base_task = sys.modules["lavis.tasks.base_task"]
    loader_utils = sys.modules["lavis.datasets.datasets.dataloader_utils"]

    def model(self):
        if self._wrapped_model is None or self._model.device != self.device:
            self._model = self._model.to(self.device)
            if self.use_distributed:
                ids = [self.config.run_cfg.gpu] if self.device.type == "cuda" else None
                self._wrapped_model = DDP(self._model, device_ids=ids)
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    runner_base.RunnerBase.model = property(model)

    original_prefetch = loader_utils.PrefetchLoader

    class PrefetchLoader(original_prefetch):
        """LAVIS's prefetcher on GPU; a plain pass-through on CPU (no CUDA stream)."""

        def __init__(self, loader):
            if torch.cuda.is_available():
                super().__init__(loader)
            else:
                self.loader = loader

        def __iter__(self):
            if torch.cuda.is_available():
                yield from super().__iter__()
            else:
                yield from self.loader

    runner_base.PrefetchLoader = PrefetchLoader

    def synchronize_between_processes(self):
        if not dist_utils.is_dist_avail_and_initialized():
            return
        device = "cuda" if torch.cuda.is_available() else "cpu"
        t = torch.tensor([self.count, self.total], dtype=torch.float64, device=device)
        torch.distributed.barrier()
        torch.distributed.all_reduce(t)
        self.count, self.total = int(t[0].item()), t[1].item()

    logger.SmoothedValue.synchronize_between_processes = synchronize_between_processes

    def init_distributed_mode(args):
        """Always a process group (gloo on CPU), so RunnerBase's barriers work in one process too."""
        from ..engine.distributed import init_distributed

        rank, world = init_distributed()
        args.rank, args.world_size = rank, world
        args.gpu = int(__import__("os").environ.get("LOCAL_RANK", 0))
        args.distributed = world > 1
        if torch.cuda.is_available():
            torch.cuda.set_device(args.gpu)
        dist_utils.setup_for_distributed(rank == 0)

    dist_utils.init_distributed_mode = init_distributed_mode

    original_evaluation = base_task.BaseTask.evaluation

    def evaluation(self, model, data_loader, cuda_enabled=None):
        if cuda_enabled is None:
            cuda_enabled = torch.cuda.is_available()
        return original_evaluation(self, model, data_loader, cuda_enabled=cuda_enabled)

    base_task.BaseTask.evaluation = evaluation
    _STATE["patched"] = True
