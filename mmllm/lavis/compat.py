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
   ``webdataset`` (installed by setup.py).
2. ``RunnerBase`` assumes CUDA. :func:`patch_runner_for_cpu` fixes, on CPU only:
   the ``model`` property (returns None when the model is already on the device; DDP
   gets ``device_ids`` only for GPUs), ``PrefetchLoader`` (creates a CUDA stream),
   ``SmoothedValue.synchronize_between_processes`` (tensor on ``"cuda"``),
   ``init_distributed_mode`` (nccl, ``torch.cuda.set_device``; and no process group at all
   for one process, while ``RunnerBase.train`` calls ``dist.barrier()``), and
   ``BaseTask.evaluation`` (moves batches to CUDA by default).

``tests/test_lavis.py`` fails if any of these import paths or patched names move.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

from ..errors import MMLLMError

PIP = "pip install --no-deps salesforce-lavis==1.0.2"
_SUBPACKAGES = ("", ".common", ".models", ".datasets", ".datasets.builders", ".datasets.datasets",
                ".processors", ".tasks", ".runners")
FRAMEWORK_MODULES = (
    "lavis.common.registry", "lavis.common.config", "lavis.common.dist_utils", "lavis.common.logger",
    "lavis.common.optims", "lavis.models.base_model", "lavis.processors.base_processor",
    "lavis.tasks.base_task", "lavis.datasets.builders.base_dataset_builder",
    "lavis.datasets.datasets.dataloader_utils", "lavis.runners.runner_base",
)
_STATE = {"imported": False, "patched": False}


def lavis_root() -> Path:
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
    for key, value in (("library_root", str(root)), ("repo_root", str(root.parent)), ("cache_root", str(Path.cwd() / "cache"))):
        if key not in registry.mapping["paths"]:
            registry.register_path(key, value)
    if "MAX_INT" not in registry.mapping["state"]:
        registry.register("MAX_INT", sys.maxsize)
        registry.register("SPLIT_NAMES", ["train", "val", "test"])
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
