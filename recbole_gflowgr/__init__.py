"""recbole-gflowgr: generative recommenders (TIGER, LETTER) and GFlowGR fine-tuning as a RecBole extension."""
from recbole_gflowgr.foundation import compat  # noqa: F401  (must come first: numpy aliases before RecBole is imported)

__version__ = "0.1.0"

# the models this package adds to RecBole: name -> the module that defines the class of that name
OUR_MODELS = {"TIGER": "recbole_gflowgr.model.tiger", "LETTER": "recbole_gflowgr.model.letter"}
