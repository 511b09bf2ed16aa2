"""qrec_tf: QueryRec (CIKM 2024) in TensorFlow/Keras 3 with a Beam preprocessing pipeline."""
from setuptools import find_packages, setup

# Versions measured to resolve together on the reference machine (docs/ARCHITECTURE.md).
INSTALL_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "keras-rs==0.4.0",
    "tensorflow-serving-api==2.21.0",
    "apache-beam[tfrecord]==2.77.0",
    "google-crc32c==1.9.0",
    "numpy>=2.4,<2.5",
    "protobuf>=6.33,<7",
    "grpcio>=1.85,<1.86",
    "pyarrow>=25,<26",
    "PyYAML>=6.0,<7",
    "tensorboard==2.21.0",  # TF 2.21 no longer pulls it in; tf.summary needs it
    "matplotlib>=3.9,<4",   # pipelines.analysis writes its histogram as PNG
    "optuna>=5.0,<6",       # qrec_tf.tune: hyper-parameter search on the validation split
]
# pipelines.score: Beam's TensorFlow model handler (apache_beam.ml.inference.
# tensorflow_inference) imports tensorflow_hub, which pulls tf-keras (pinned to TensorFlow's
# version; Keras 3 stays the tf.keras: tf-keras is used only with TF_USE_LEGACY_KERAS=1).
SCORE_REQUIRES = ["tensorflow-hub==0.16.1", "tf-keras==2.21.0"]

setup(
    name="qrec_tf",
    version="0.1.0",
    description="QueryRec: search-query representations for feed CTR prediction (TF/Keras 3, Beam)",
    packages=find_packages(include=["qrec_tf", "qrec_tf.*", "pipelines", "pipelines.*",
                                    "serving", "serving.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "gpu": ["tensorflow[and-cuda]==2.21.0"],
        "score": SCORE_REQUIRES,
        # the tests run pipelines.score, so the development install has its extra too
        "dev": ["pytest>=9,<10", "pytest-xdist>=3.6,<4", "hypothesis>=6.100,<7",
                "ruff>=0.6,<1", *SCORE_REQUIRES],
    },
)
