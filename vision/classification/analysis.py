"""Inputs and exact foregrounds for ``mmllm analyze`` on image classification: the digit's own pixels."""
from __future__ import annotations

import torch

from mmllm.analysis.run import AnalysisInputs


def analysis_inputs(task, model, dataset, num: int) -> AnalysisInputs:
    """The first ``num`` images of the split; foreground = pixels whose un-normalised value exceeds half the
    image's maximum (MNIST digits are bright strokes on a black background)."""
    items = [dataset[i] for i in range(min(num, len(dataset)))]
    images = torch.stack([it["image"] for it in items])
    mean = torch.tensor(task.data_cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(task.data_cfg.std).view(1, -1, 1, 1)
    pixels = (images * std + mean)[:, 0]
    masks = pixels > 0.5 * pixels.amax(dim=(1, 2), keepdim=True)
    dtype = next(model.parameters()).dtype
    vit = model.vit
    return AnalysisInputs(forward=lambda m: m(images.to(dtype)), masks=masks, display=pixels,
                          prefix=vit.num_prefix_tokens, grid=tuple(vit.patch_embed.grid_size))
