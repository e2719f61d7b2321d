"""Motion forecasting task for the shared engine: Argoverse-format data, VectorNet + block, Argoverse metrics."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch import nn
from torch.utils.data import Dataset

from mmllm.blocks import BlockOptions
from mmllm.engine import distributed
from mmllm.engine.evaluation import predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_task
from mmllm.engine.task import DataSection, ModelSection, Task
from mmllm.errors import ConfigError, DataError

from .data import LaneMap, MotionDataset, SceneOptions, collate, load_split, read_lane_file, to_city_frame
from .metrics import forecasting_metrics
from .model import create_vectornet_model, forecasting_loss

log = logging.getLogger(f"mmllm.{__name__}")  # under the mmllm logger (mmllm.logs): shown by every command


class MotionModelOptions(ModelSection):
    hidden_dim: PositiveInt = Field(64, description="polyline sub-graph width (VectorNet: 64)")
    dim: PositiveInt = Field(128, description="polyline token width (global graph, block, decoder)")
    subgraph_layers: PositiveInt = Field(3, description="sub-graph layers (VectorNet: 3)")
    global_layers: PositiveInt = Field(1, description="global interaction graph layers (VectorNet: 1)")
    num_heads: PositiveInt = 4
    dropout: float = Field(0.0, ge=0, lt=1)
    num_modes: PositiveInt = Field(6, description="K forecast modes (Argoverse 1: 6)")
    coord_scale: float = Field(10.0, gt=0, description="metres per unit inside the network")
    winner: Literal["fde", "ade"] = Field("fde", description="winner-takes-all rule: closest final point or mean")
    cls_weight: float = Field(1.0, ge=0, description="weight of the mode-classification loss")
    smooth_l1_beta: float = Field(1.0, gt=0, description="smooth-L1 transition (m)")
    llm_block: BlockOptions = Field(None, description="the block (mmllm.build_visual_llm_layer options)")


class MotionDataOptions(DataSection):
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train/data", "val": "val/data", "test": "test/data"},
        description="split -> folder of Argoverse 1 CSVs (relative paths are under root)",
    )
    lane_file: str = Field("lanes.json", description="lane centre-line JSON (relative: under root)")
    obs_len: PositiveInt = 20
    pred_len: PositiveInt = 30
    frame_interval: float = Field(0.1, gt=0, description="s between frames")
    lane_radius: float = Field(50.0, gt=0, description="m around the agent's last position")
    max_lanes: PositiveInt = 32
    lane_max_vectors: PositiveInt = Field(9, description="longer lanes are cut into several polylines")
    max_agents: PositiveInt = Field(16, description="the AGENT, the AV, then the nearest OTHERS")
    heading_min_displacement: float = Field(0.2, ge=0, description="m; heading from the last such move")
    max_scenes: PositiveInt | None = Field(None, description="read only the first N files of each split")
    miss_threshold: float = Field(2.0, gt=0, description="m (Argoverse 1: 2.0)")


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` into a temporary file, then renamed: a reader never sees half a file."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


ROOT = Path(__file__).resolve().parents[2]


# lower-is-better Argoverse metrics; main metric minFDE because the Argoverse protocol is built on it: the scored
# mode is the one with the smallest final displacement (minADE is that mode's ADE, MR thresholds its FDE), and the
# probability-aware variant (brier-minFDE) adds to it
@registered_task(
    "mmllm_motion",
    model_arch="mmllm_vectornet",
    metric="minFDE",
    higher_is_better=False,
    default_config=ROOT / "configs/vision/motion_sim.yaml",
    preparers={"motion_sim": "vision.motion.simulate:prepare_motion_sim"},
    variants={"block": (), "no_block": ("model.llm_block.kind=none",)},
    description="Motion forecasting (Argoverse 1 format): VectorNet-style encoder, the frozen LLM block on "
    "polyline tokens, K=6 modes; embedded data: kinematic-bicycle scenes on generated lane graphs",
)
class MotionForecastingTask(Task):
    """Forecast the AGENT's next 3 s (K modes) from 2 s of tracks and the lane graph."""

    ModelOptions = MotionModelOptions
    DataOptions = MotionDataOptions
    compute_dtype_inputs = ()  # vectors and trajectories stay fp32; the model casts after scaling

    def __init__(self, cfg, entry=None):
        super().__init__(cfg, entry)
        d = self.data_cfg
        self.scene_options = SceneOptions(
            d.obs_len,
            d.pred_len,
            d.frame_interval,
            d.lane_radius,
            d.max_lanes,
            d.lane_max_vectors,
            d.max_agents,
            d.heading_min_displacement,
        )
        self.lanes: LaneMap | None = None

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        if not path.is_absolute() and self.data_cfg.root:
            path = Path(self.data_cfg.root).expanduser() / path
        return path

    def build_preprocess(self) -> Preprocess:
        """The lane map scenes are vectorised against; trajectories need no transform or tokenizer."""
        if self.lanes is None:
            lane_file = self._path(self.data_cfg.lane_file)
            self.lanes = LaneMap(read_lane_file(lane_file), self.data_cfg.lane_max_vectors, lane_file)
        return Preprocess()

    def build_model(self) -> nn.Module:
        return create_vectornet_model(self.model_cfg.to_dict(), pred_len=self.data_cfg.pred_len)

    def build_datasets(self) -> dict[str, Dataset]:
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess read the lane map
        if "train" not in self.data_cfg.splits:
            raise ConfigError(f"datasets.{self.dataset_key}.splits needs a 'train' folder")
        main = distributed.is_main()
        datasets = {}
        for name, folder in self.data_cfg.splits.items():
            datasets[name] = load_split(
                self._path(folder), self.lanes, self.scene_options, name, self.data_cfg.max_scenes, progress=main
            )
        if not datasets["train"].has_future:
            raise DataError(f"train split {self._path(self.data_cfg.splits['train'])} has no future frames to learn")
        return datasets

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(samples)

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        traj, scores = model(batch)
        m = self.model_cfg
        return forecasting_loss(traj, scores, batch["target"], m.winner, m.cls_weight, m.smooth_l1_beta)

    def forecast(self, model: nn.Module, dataset: MotionDataset, desc: str = "forecast"):
        """``(forecasts [N,K,T,2], probabilities [N,K])`` in the city frame, in dataset order (all ranks)."""

        def step(m, batch):
            traj, scores = m(batch)
            probs = torch.softmax(scores.float(), dim=-1)
            return zip(batch["index"].tolist(), zip(traj.float().cpu().numpy(), probs.cpu().numpy()))

        by_index = predict_split(
            model, dataset, self.collate, self.run.batch_size_eval, step, desc=desc, task=self, ids=range(len(dataset))
        )
        forecasts = np.stack(
            [to_city_frame(by_index[i][0], s["origin"], s["heading"]) for i, s in enumerate(dataset.samples)]
        )
        probabilities = np.stack([by_index[i][1] for i in range(len(dataset))]).astype(np.float64)
        return forecasts, probabilities

    def evaluate(self, model: nn.Module, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        """Forecasts of every scene written to ``forecasts_<split>.npz`` (city frame: the file
        ``python -m vision.motion.evaluate`` scores); Argoverse metrics when the split has the future."""
        forecasts, probabilities = self.forecast(model, dataset, desc=f"eval {split}")
        arrays = {
            "forecasts": forecasts,
            "probabilities": probabilities,
            "seq_ids": np.array([s["seq_id"] for s in dataset.samples]),
            "cities": np.array([s["city"] for s in dataset.samples]),
        }
        metrics: dict[str, float] = {}
        if dataset.has_future:
            arrays["gt"] = np.stack([s["gt_city"] for s in dataset.samples])
            full = forecasting_metrics(
                forecasts, arrays["gt"], probabilities, miss_threshold=self.data_cfg.miss_threshold
            )
            metrics = {k: full[k] for k in ("minADE", "minFDE", "MR", "brier-minFDE")}
        if distributed.is_main():
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            _write_npz(Path(out_dir) / f"forecasts_{split}.npz", **arrays)
            if not dataset.has_future:  # an empty result is said, never left to look like a scored split
                folder = self.data_cfg.splits.get(split)
                log.warning(
                    "%s split %r (%s): not scored, no ground-truth futures in its sequences (only %d "
                    "observed frames); its forecasts are in %s",
                    self.name,
                    split,
                    self._path(folder) if folder is not None else "?",
                    self.data_cfg.obs_len,
                    Path(out_dir) / f"forecasts_{split}.npz",
                )
        return metrics
