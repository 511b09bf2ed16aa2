"""qrec_tf: QueryRec (Wang et al., CIKM 2024) in TensorFlow / Keras 3."""

__version__ = "0.1.0"
