"""Image classification: a timm ViT with the frozen LLM block inserted after ViT block k.

Modules: ``model`` (the classifier), ``data`` (ImageFolder splits, embedded MNIST),
``corruptions`` (the ImageNet-C-style robustness set), ``task`` (the engine task),
``evaluate`` (metrics and CLI), ``registry`` (the task entry). Nothing is imported eagerly.
"""
