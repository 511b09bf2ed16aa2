"""Keras 3 layers of qrec_tf, one concept per file."""

from qrec_tf.layers.contrastive import BilinearSimilarity
from qrec_tf.layers.denoiser import Denoiser, step_embedding
from qrec_tf.layers.dice import Dice
from qrec_tf.layers.diffusion import GaussianDiffusion, beta_schedule
from qrec_tf.layers.din_attention import DINAttention
from qrec_tf.layers.embedding import SparseEmbedding
from qrec_tf.layers.extraction import ExtractionLevel
from qrec_tf.layers.instrumental import InstrumentalDecomposition
from qrec_tf.layers.interest_contrast import InterestContrast
from qrec_tf.layers.query_embedding import QueryEmbedding
from qrec_tf.layers.sas_encoder import SASBlock, SASEncoder

__all__ = ["BilinearSimilarity", "Denoiser", "step_embedding", "Dice", "DINAttention",
           "GaussianDiffusion", "beta_schedule", "SparseEmbedding", "ExtractionLevel",
           "InstrumentalDecomposition", "InterestContrast", "QueryEmbedding", "SASBlock",
           "SASEncoder"]
