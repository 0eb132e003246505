"""Semantic-ID item tokenizers (TIGER's RQ-VAE, LETTER) trained on offline item text embeddings; RecBole-free.

    from recbole_gflowgr.tokenizer import get_semantic_ids
    ids = get_semantic_ids("amazon-beauty", "letter")  # ids.codes (n_items, L), ids.level_sizes, ids.item_tokens
"""
from recbole_gflowgr.tokenizer.semantic_ids import (  # noqa: F401
    TOKENIZERS, SemanticIDs, code_stats, disambiguate, get_semantic_ids, load_tokenizer_config, parse_index_json,
    read_semantic_ids)
