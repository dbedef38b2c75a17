"""tfsdn: sparse DenseNets pruned in stages with tensorflow-model-optimization."""

import setuptools

setuptools.setup(
    name="tfsdn",
    version="0.1.0",
    description=("Learn which concatenated inputs of a DenseNet matter, prune "
                 "the rest in stages with tfmot, and export a compact model."),
    packages=["tfsdn", "tfsdn.common", "tfsdn.keras3"],
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tf-keras>=2.21,<2.22",
        "tensorflow-model-optimization>=0.8,<0.9",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets 4.9.10 imports it through etils without
        # declaring it (tensorflow/datasets#11212).
        "importlib_resources",
        "tensorboard>=2.20",  # tfmot's PruningSummaries writes summaries.
        "absl-py>=1.0",
        "numpy",
    ],
    extras_require={
        "plot": ["matplotlib>=3.5"],
        # benchmarks/: the evidence plot of evidence_table.py.
        "bench": ["matplotlib>=3.5"],
        # export_onnx and the ONNX Runtime / LiteRT figures of
        # benchmarks/deploy_speed.py; the versions tested together.
        "onnx": ["tf2onnx==1.17.0", "onnx==1.23.2", "onnxruntime==1.32.0",
                 "backports.strenum"],
        "litert": ["ai-edge-litert==2.3.0"],
        # The Keras 3 path's second backend (tests run it in its own
        # process) and its TensorFlow-free CIFAR reader.
        "keras3": ["keras>=3.6", "jax[cpu]>=0.4.34", "pillow"],
        # The guides under docs/ (mkdocs build --strict).
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5"],
        "test": ["pytest>=7", "pytest-xdist>=3", "hypothesis>=6",
                 "matplotlib>=3.5", "pillow"],
    },
)
