"""mmllm: frozen LLM transformer blocks as visual encoder layers.

Projects live in ``projects/<name>/`` (``3dvqa`` is not a Python identifier), so each
project keeps its library code in a uniquely named package ``projects/<name>/mmllm_<name>/``
that is installed here, and its scripts (``train.py``, ``evaluate.py``) are run by path.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
# the version lives in one place: mmllm/__init__.py
VERSION = re.search(r'^__version__ = "([^"]+)"', (ROOT / "mmllm/__init__.py").read_text(), re.M).group(1)

# Project packages: projects/<name>/mmllm_<name>[/sub...]
package_dir = {}
project_packages = []
for project in sorted((ROOT / "projects").glob("*/")):
    for pkg in find_packages(where=str(project), include=["mmllm_*", "mmllm_*.*"]):
        project_packages.append(pkg)
        package_dir[pkg] = str((project / pkg.replace(".", "/")).relative_to(ROOT))

setup(
    name="mmllm",
    version=VERSION,
    description="Frozen transformer blocks of pretrained LLMs as visual encoder layers",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["mmllm", "mmllm.*", "vision", "vision.*"]) + project_packages,
    package_dir=package_dir,
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "transformers==5.23.0",
        "accelerate==1.15.0",
        "gguf==0.19.0",
        "safetensors==0.8.0",
        "timm==1.0.31",
        "open_clip_torch==3.3.0",
        "datasets==5.2.0",
        "torchdata==0.11.0",  # StatefulDataLoader: the resumable training data position
        "deepspeed==0.19.8",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "psutil>=5.9",
        "omegaconf==2.4.0",
        "pydantic>=2.6,<3",
        "h5py>=3.10",       # ModelNet40 / ScanObjectNN .h5 releases
        "trimesh==5.2.0",   # mesh sampling (embedded point clouds and 3D scenes; .ply scenes)
        "av==18.1.0",       # video decoding/writing beside decord
        # runtime modules LAVIS's framework imports (LAVIS itself: requirements-assets.txt, --no-deps)
        "decord==0.6.0",
        "iopath>=0.1.10",
        "webdataset>=0.2",
    ],
    extras_require={
        "tb": ["tensorboard==2.21.0"],  # training curves as TensorBoard events (mmllm.engine.tracking)
        "test": ["pytest==9.0.3", "ruff==0.17.6", "tensorboard==2.21.0", "torchmetrics==1.9.0", "peft==0.21.2"],
        "lora": ["peft==0.21.2"],  # stage-2 LoRA of the LLaVA-style path
    },
    package_data={"mmllm.lavis": ["defaults/*.yaml"], **{p: ["lavis_defaults/*.yaml"] for p in project_packages if "." not in p}},
    entry_points={
        "console_scripts": ["mmllm=mmllm.cli:main"],
        # the task registry (mmllm.engine.registry): each task package advertises its own entries
        "mmllm.tasks": [
            "pretrain = mmllm.tasks.registry:entries",
            "vqa = mmllm_vqa.registry:entries",
            "retrieval = mmllm_retrieval.registry:entries",
            "3dvqa = mmllm_3dvqa.registry:entries",
            "image_cls = vision.classification.registry:entries",
            "pointcloud = vision.pointcloud.registry:entries",
            "action = vision.action.registry:entries",
            "motion = vision.motion.registry:entries",
        ],
    },
)
