"""LAVIS integration: our models, tasks, dataset builders and processors in LAVIS's registry, a
DeepSpeed runner for LAVIS task configs, and the compatibility layer that lets LAVIS 1.0.2 run here.

One import makes LAVIS's own API work with our models::

    import mmllm.lavis  # registers every task of mmllm's registry in LAVIS's
    from lavis.models import load_model_and_preprocess

    model, vis_processors, txt_processors = load_model_and_preprocess(
        name="mmllm_meter_vqa", model_type="default", is_eval=True)
    image = vis_processors["eval"](pil_image).unsqueeze(0)
    question = txt_processors["eval"]("what color is the shape?")
    model.predict_answers({"image": image, "text_input": [question]})  # -> ["red"]

(LAVIS's ``lavis/__init__.py`` imports its whole model zoo, which fails on transformers 5: import
``mmllm.lavis`` instead of ``lavis`` first; see :mod:`mmllm.lavis.compat`.)
"""

from .adapters import register_all

register_all()
