"""Pure-vision tasks that use mmllm's block and engine: image classification (``vision.classification``),
point clouds, action recognition and motion forecasting. Each is a sub-package registered in the task
registry; nothing is imported here, so importing one task never imports the others."""
