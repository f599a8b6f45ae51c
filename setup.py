"""One ament_python package (colcon builds it) and one pip-installable project.

colcon/ament needs: the ``resource/mfuser_ros`` marker, ``package.xml`` under share/, launch and config
data files, and console scripts installed into ``lib/mfuser_ros`` (see setup.cfg) so ``ros2 run`` finds them.
"""

from __future__ import annotations

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "mfuser_ros"

# Every dependency is pinned: the node runs on vehicles where an unplanned upgrade is a regression.
# torch/torchvision are the pair that imports cleanly together on the project's machines.
CORE = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "timm==1.0.31",
    "open_clip_torch==3.3.0",
    "einops==0.8.2",
    "numpy==2.4.6",
    "opencv-python-headless==5.0.0.93",
    "pyyaml==6.0.4",
    "safetensors==0.8.0",
    "tqdm==4.70.1",
    "ftfy==6.3.1",
    "regex==2026.11.19",
    "simplejpeg==1.9.0",  # strict JPEG decoding: libjpeg warnings (corrupt data) make a frame malformed
    "pillow==13.0.0",  # label PNGs in palette mode (Mapillary, BDD colormaps) need PIL, not cv2
]
# colcon builds the ament_python package with the interpreter it runs on (sys.executable), so it lives in the
# project's venv: `.venv/bin/colcon build` then installs console scripts whose shebang is the venv's Python, which
# has torch. colcon-core caps setuptools below 80 (`setup.py develop`, used by --symlink-install); the rest are
# colcon-core's and colcon-ros's own requirements, pinned like everything else.
COLCON = [
    "colcon-core==0.21.3",
    "colcon-ros==0.5.0",
    "colcon-python-setup-py==0.2.9",
    "colcon-package-selection==0.2.10",
    "colcon-bash==0.5.0",
    "colcon-library-path==0.2.1",
    "colcon-parallel-executor==0.4.0",
    "colcon-recursive-crawl==0.2.3",
    "colcon-test-result==0.3.8",
    "colcon-cmake==0.2.30",
    "colcon-pkg-config==0.1.0",
    "catkin-pkg==1.1.1",
    "empy==4.2.1",
    "distlib==0.4.4",
    "setuptools==79.0.1",
    "pytest-cov==7.1.0",
    "pytest-repeat==0.9.4",
    "pytest-rerunfailures==16.7",
    "coverage==7.17.5",
    "docutils==0.23",
]
EXTRAS = {
    # CUDA kernels: only on a CUDA torch (their setup builds a URL from torch.version.cuda).
    "cuda": ["mamba-ssm==2.3.2", "causal-conv1d==1.7.0"],
    "export": ["onnx==1.23.2", "onnxruntime==1.32.0", "onnxscript==0.7.2"],
    "ros": ["rosbags==0.11.9", "rosbags-image==0.10.4", "cyclonedds==11.0.1"],
    # SigLIP's tokenizer (the user supplies its files): either library reads them.
    "siglip": ["tokenizers==0.23.3", "sentencepiece==0.2.3"],
    # mfuser-replay-fleet: many bags as one job on a Ray cluster (or local Ray workers).
    "fleet": ["ray==2.60.0"],
    "train": ["tensorboard==2.21.0", "cityscapesscripts==2.3.0", "scipy==1.17.1"],
    "dev": ["pytest==9.2.0", "pytest-timeout==2.4.0", "hypothesis==6.170.17", "ruff==0.17.6", *COLCON],
}

setup(
    name=PACKAGE,
    version="0.1.0",
    description="MFuser domain-generalized semantic segmentation: model library, training and a ROS 2 node",
    long_description=Path("README.md").read_text(encoding="utf-8") if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mfuser_model*", "mfuser_ros*", "training*"]),
    include_package_data=True,
    # The native selective scan compiles from these sources at first use.
    package_data={"mfuser_model": ["ops/csrc/*.cpp", "ops/csrc/*.h"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/presets", glob("config/presets/*.yaml")),
        # The bundled toy model, so `checkpoint:=package://mfuser_ros/models/tiny-eva02-synthetic.safetensors`
        # works from an install as from the checkout.
        (f"share/{PACKAGE}/models", [*glob("models/*.safetensors"), "models/README.md"]),
    ],
    install_requires=CORE,
    extras_require=EXTRAS,
    zip_safe=False,
    entry_points={"console_scripts": [
        "mfuser_node = mfuser_ros.node.cli:ros_node_main",
        "mfuser-node = mfuser_ros.node.cli:main",
        "mfuser-segment = mfuser_model.segment_cli:main",
        "mfuser-export = mfuser_model.deploy.cli:main",
        "mfuser-train = training.train:main",
        "mfuser-eval = training.eval_cli:main",
        "mfuser-make-synthetic = training.make_synthetic:main",
        "mfuser-replay = mfuser_ros.replay.cli:main",
        "mfuser_replay = mfuser_ros.replay.cli:main",
        "mfuser-replay-fleet = mfuser_ros.replay.fleet:main",
        "mfuser-make-demo-bag = mfuser_ros.replay.demo_bag:main",
        "mfuser-convert = mfuser_model.weights.convert_cli:main",
    ]},
)
