"""benchmarks/train_speed.py: the analytic FLOP count of a T5 step against torch's FlopCounterMode."""
import importlib.util
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5ForConditionalGeneration

from conftest import REPO


def bench():
    spec = importlib.util.spec_from_file_location("train_speed", os.path.join(REPO, "benchmarks", "train_speed.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_analytic_t5_flops_equal_the_counted_ones(proj):
    cfg = T5Config(vocab_size=50, d_model=16, d_kv=8, num_heads=3, d_ff=24, num_layers=2, num_decoder_layers=3,
                   feed_forward_proj=proj, decoder_start_token_id=0, pad_token_id=0)
    cfg._attn_implementation = "eager"  # FlopCounterMode does not count CPU sdpa's attention matmuls
    t5 = T5ForConditionalGeneration(cfg).eval()
    B, S, T = 3, 7, 4
    ids = torch.randint(1, 50, (B, S))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        t5(input_ids=ids, decoder_input_ids=torch.randint(1, 50, (B, T)))
    n_ff = 3 if proj.startswith("gated") else 2
    assert bench().t5_forward_flops(cfg, torch.full((B,), S), T, n_ff) == counter.get_total_flops()
    # the decoder alone, without cross-attention K/V and head: what each extra GFlowGR trajectory costs
    enc = bench().t5_forward_flops(cfg, torch.full((B,), S), T, n_ff, head=0, cross_kv=False, encoder=False)
    assert 0 < enc < counter.get_total_flops() / 2
