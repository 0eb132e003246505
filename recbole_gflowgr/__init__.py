"""recbole-gflowgr: generative recommenders (TIGER, LETTER) and GFlowGR fine-tuning as a RecBole extension."""
from recbole_gflowgr import compat  # noqa: F401  (must come first: numpy aliases before RecBole is imported)

__version__ = "0.1.0"
