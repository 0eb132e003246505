"""LETTER (Wang et al. 2024) as a generative recommender: TIGER's backbone on LETTER item IDs (RQ-VAE +
collaborative and diversity regularisation, ``tokenizer/letter.py``) trained with LETTER's ranking-guided
generation loss (cross-entropy on logits / ``loss_temperature``)."""
from recbole_gflowgr.model.tiger import TIGER


class LETTER(TIGER):
    default_tokenizer = "letter"
