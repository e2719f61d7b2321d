"""Image classification: a timm ViT with the frozen LLM block inserted after ViT block k.

Modules: ``model`` (the classifier), ``data`` (ImageFolder splits, embedded MNIST),
``corruptions`` (the ImageNet-C-style robustness set), ``task`` (the engine task),
``evaluate`` (metrics and CLI), ``registry`` (the task entry), ``timm_models`` (the
classifiers as timm models). Only ``timm_models`` is imported here, so that after
``import vision.classification`` ``timm.create_model("vit_small_patch16_224_llm", ...)`` works.
"""

from . import timm_models  # noqa: F401 - registers the timm model names
