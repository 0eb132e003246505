"""TIGER (Rajput et al. 2023): a T5 encoder-decoder that reads the history as semantic-ID tokens and generates the
next item's semantic ID, as a RecBole ``SequentialRecommender``.

Vocabulary: 0 = pad (also the decoder start token), 1 = eos, then the codes of level 0, 1, ..., L-1 in
contiguous ranges (level l, code c → ``2 + sum(level_sizes[:l]) + c``), then ``user_id_buckets`` user tokens.
Encoder input: [user token] + the codes of the last ``MAX_ITEM_LIST_LENGTH`` history items, oldest first.

``full_sort_predict`` runs trie-constrained beam search (``beam_search.py``) and returns (B, n_items) with the
beam's sequence log-probability for the ``beam_size`` generated items and ``-inf`` for every other item: items
outside the beam are unranked (RecBole's evaluator then only credits hits inside the top-``beam_size``).
"""
from logging import getLogger

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from transformers import T5Config, T5ForConditionalGeneration

from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.model.beam_search import SemanticIDTrie, constrained_beam_search, sequence_log_probs
from recbole_gflowgr.model.fast_t5 import compile_t5, use_fast_dropout

N_SPECIAL = 2  # pad (= decoder start), eos


def fetch_semantic_ids(config, tokenizer, cf_embeddings=None):
    """The dataset's semantic IDs from ``tokenizer`` (built on first use, then cached; see tokenizer/);
    ``cf_embeddings``: LETTER's collaborative item embeddings or their provider (``get_semantic_ids``)."""
    from recbole_gflowgr.tokenizer import get_semantic_ids

    from recbole_gflowgr.data import dataset_settings

    settings = dataset_settings(config)  # the run's source and text fields; tokenizer_args may still override them
    overrides = {**{k: v for k, v in settings.items() if k != "data_path"}, **(config["tokenizer_args"] or {})}
    return get_semantic_ids(config["dataset"], tokenizer, data_path=settings["data_path"], overrides=overrides,
                            device="cpu", logger=getLogger(), show_progress=config["show_progress"],
                            cf_embeddings=cf_embeddings)


class TIGER(SequentialRecommender):
    input_type = InputType.POINTWISE
    default_tokenizer = "rqvae"

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.beam_size = config["beam_size"]
        topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
        if self.beam_size < max(topk):
            raise ConfigError(f"beam_size={self.beam_size} is smaller than max(topk)={max(topk)}: items outside the "
                              f"beam are unranked, so set beam_size >= {max(topk)} (or lower topk)")
        if config["loss_temperature"] <= 0:
            raise ConfigError(f"loss_temperature={config['loss_temperature']} must be > 0 (1 = plain cross-entropy)")
        self.temperature = float(config["loss_temperature"])
        self.length_buckets = max(1, int(config["length_buckets"]))
        self.user_buckets = int(config["user_id_buckets"] or 0)
        self.pad_to = None  # benchmarks only: pad every history to this many items (the naive way)

        codes, level_sizes = self._semantic_ids(config, dataset)  # (n_items, L) per-level codes; row 0 unused
        self.level_sizes = [int(s) for s in level_sizes]
        offsets = N_SPECIAL + np.concatenate([[0], np.cumsum(level_sizes)[:-1]])
        tokens = torch.as_tensor(codes + offsets, dtype=torch.long)
        tokens[0] = 0  # padding item -> pad tokens
        # persistent: a checkpoint carries the IDs it was trained on (checked when fine-tuning starts from it)
        self.register_buffer("item_tokens", tokens)  # (n_items, L)
        self.code_len = tokens.shape[1]
        self.user_offset = N_SPECIAL + int(sum(level_sizes))
        self._trie = SemanticIDTrie(tokens[1:])  # trie item i <-> RecBole item id i + 1

        t5 = T5Config(
            vocab_size=self.user_offset + self.user_buckets, d_model=config["d_model"], d_kv=config["d_kv"],
            d_ff=config["d_ff"], num_layers=config["num_encoder_layers"],
            num_decoder_layers=config["num_decoder_layers"], num_heads=config["num_heads"],
            dropout_rate=config["dropout_rate"], feed_forward_proj=config["feed_forward_proj"],
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=True,
            relative_attention_num_buckets=config["relative_attention_num_buckets"],
        )
        self.t5 = T5ForConditionalGeneration(t5)
        if config["fast_dropout"]:  # opt-in speed-ups (fast_t5.py); off by default: the default numerics stay HF's
            use_fast_dropout(self.t5)
        if config["compile"]:
            compile_t5(self.t5)
        getLogger().info(f"{type(self).__name__}: {len(self._trie)} items, IDs of {self.code_len} tokens, "
                         f"vocabulary {t5.vocab_size}")

    @property
    def trie(self):
        """The prefix trie, on the model's device (it is no nn.Module, so ``model.to(device)`` cannot move it)."""
        if self._trie.device != self.item_tokens.device:
            self._trie.to(self.item_tokens.device)
        return self._trie

    # ----- semantic IDs -----------------------------------------------------------------------------------------
    def _semantic_ids(self, config, dataset):
        if hasattr(dataset, "semantic_codes"):  # an exported checkpoint's catalog (recommend.py): IDs given
            return dataset.semantic_codes, dataset.level_sizes
        name = config["tokenizer"] or self.default_tokenizer
        # the runtime (quick_start.build_model) hands over the CM's item embeddings for LETTER's tokenizer
        sem = fetch_semantic_ids(config, name, cf_embeddings=getattr(dataset, "cf_embeddings", None))
        self.semantic_ids_path = sem.path  # its rqvae.pth assigns IDs to new items (export.py)
        row = {token: i for i, token in enumerate(sem.item_tokens)}
        id2token = dataset.field2id_token[self.ITEM_ID]
        missing = [t for t in id2token[1:] if t not in row]
        if missing:
            raise ConfigError(f"the {name} semantic IDs in {sem.path} lack {len(missing)} item(s) of dataset "
                              f"'{config['dataset']}' (e.g. '{missing[0]}'); delete that folder to rebuild them")
        codes = np.zeros((len(id2token), sem.codes.shape[1]), dtype=np.int64)
        codes[1:] = sem.codes[[row[t] for t in id2token[1:]]]
        return codes, list(sem.level_sizes)

    # ----- inputs -----------------------------------------------------------------------------------------------
    def encoder_inputs(self, interaction, rows=None):
        """(input_ids, attention_mask), both (B, S): the history's code tokens, trimmed to the batch's longest."""
        item_seq, item_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if rows is not None:
            item_seq, item_len = item_seq[rows], item_len[rows]
        item_seq = item_seq[:, : self.pad_to or int(item_len.max())]  # (B, S_items): left-aligned, 0-padded
        ids = self.item_tokens[item_seq].flatten(1)  # (B, S_items * L)
        if self.user_buckets:
            users = interaction[self.USER_ID] if rows is None else interaction[self.USER_ID][rows]
            user_tok = self.user_offset + users % self.user_buckets  # (B,)
            ids = torch.cat([user_tok.unsqueeze(1), ids], dim=1)
        return ids, (ids != 0).long()

    def target_tokens(self, items):
        return self.item_tokens[items]  # (B, L)

    def length_groups(self, interaction):
        """Row indices grouped by history length (``length_buckets`` groups), so that short histories are not padded
        to the longest one in the batch; one group = the whole batch."""
        lengths = interaction[self.ITEM_SEQ_LEN]
        if self.length_buckets == 1:
            return [None]
        order = torch.argsort(lengths, stable=True)
        return [g for g in torch.tensor_split(order, self.length_buckets) if len(g)]

    def token_logits(self, hidden):
        """Full-vocabulary logits (..., V) from decoder states (..., d), exactly as T5's LM head computes them."""
        if self.t5.config.scale_decoder_outputs:
            hidden = hidden * (self.t5.config.d_model ** -0.5)
        return self.t5.lm_head(hidden)

    # ----- losses -----------------------------------------------------------------------------------------------
    def sft_loss(self, interaction, rows=None, reduction="mean"):
        """Next-token cross-entropy over the target item's code tokens (GFlowGR Eq. 1); logits / temperature
        (LETTER's ranking-guided loss; 1 = plain CE)."""
        ids, mask = self.encoder_inputs(interaction, rows)
        pos = interaction[self.POS_ITEM_ID] if rows is None else interaction[self.POS_ITEM_ID][rows]
        labels = self.target_tokens(pos)  # (B, L)
        dec_in = self.t5._shift_right(labels)  # (B, L): decoder start token, then the first L-1 codes
        logits = self.t5(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits  # (B, L, V)
        loss = F.cross_entropy((logits / self.temperature).flatten(0, 1), labels.flatten(), reduction="none")
        loss = loss.view(labels.shape).sum(dim=1)  # (B,) summed over the L tokens
        return loss.mean() if reduction == "mean" else loss

    def calculate_loss(self, interaction):
        n = len(interaction)
        groups = self.length_groups(interaction)
        if groups == [None]:
            return self.sft_loss(interaction)
        return sum(self.sft_loss(interaction, rows, reduction="none").sum() for rows in groups) / n

    # ----- prediction -------------------------------------------------------------------------------------------
    def beam_search(self, interaction, beam_size=None):
        """(items, scores), (B, K): RecBole item ids (0 where no item) and constrained sequence log-probs."""
        ids, mask = self.encoder_inputs(interaction)
        items, scores = constrained_beam_search(self.t5, ids, mask, self.trie, beam_size or self.beam_size,
                                               length_groups=self.length_buckets, temperature=self.temperature)
        return items + 1, scores  # trie index -> RecBole id; -1 (no item) -> 0

    def full_sort_predict(self, interaction):
        items, scores = self.beam_search(interaction)  # (B, K)
        out = torch.full((items.shape[0], self.n_items), float("-inf"), device=scores.device)  # (B, n_items)
        out.scatter_(1, items, scores)
        out[:, 0] = float("-inf")
        return out

    def predict(self, interaction):
        ids, mask = self.encoder_inputs(interaction)
        return sequence_log_probs(self.t5, ids, mask, self.trie, interaction[self.ITEM_ID] - 1,
                                  temperature=self.temperature)  # (B,)
