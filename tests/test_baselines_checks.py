"""Fine-tuning baselines: impossible hyperparameters, yaml comments, DPO's fixed negatives, rewards over semantic
levels, dropout, the policy's temperature, and a 1-epoch run of each method through the CLI (toys:
tests/finetune_toys.py)."""
import json
import os

import pytest
import torch
from torch import nn

from conftest import REPO
from finetune_toys import FINETUNE_YAML, N_ITEMS, TRAINERS, ToyGR, bare, defaults, toy_batch
from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.finetune.common import policy_and_reference
from recbole_gflowgr.model.beam_search import constrained_beam_search, sequence_log_probs


# ----- config errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,key,value", [
    ("dpo", "dpo_beta", 0), ("dpo", "dpo_beta", -1.0), ("s-dpo", "sdpo_beta", 0.0), ("s-dpo", "sdpo_n_neg", 0),
    ("s-dpo", "sdpo_n_neg", 99), ("sprec", "sprec_beta", -0.1), ("sprec", "sprec_sft_phase", "yes"),
    ("ipa", "ipa_beams", 1), ("ipa", "ipa_beams", 99), ("ipa", "ipa_dpo_ratio", 0.0), ("ipa", "ipa_lambda", -1),
    ("ppo", "ppo_clip", 0), ("ppo", "ppo_gamma", 1.5), ("ppo", "ppo_lambda", -0.1), ("ppo", "ppo_epochs", 0),
    ("ppo", "ppo_reward", "ndcg"), ("ppo", "ppo_temperature", 0), ("grpo", "grpo_group_size", 1),
    ("grpo", "grpo_clip", -0.2), ("grpo", "grpo_beta", -1), ("grpo", "grpo_iterations", 1.5),
])
def test_impossible_hyperparameters_are_clear_errors(method, key, value):
    with pytest.raises(ConfigError, match=f"^{key}=") as err:
        bare(method, ToyGR(), **{key: value})
    assert "\n" not in str(err.value)


def test_every_yaml_key_is_commented_and_prefixed():
    prefixes = {"dpo": "dpo_", "sdpo": "sdpo_", "sprec": "sprec_", "ipa": "ipa_", "ppo": "ppo_", "grpo": "grpo_"}
    for name, prefix in prefixes.items():
        with open(os.path.join(FINETUNE_YAML, f"{name}.yaml")) as f:
            lines = [line for line in f if line.strip() and not line.startswith("#")]
        assert lines and all(line.startswith(prefix) and "# (" in line for line in lines), name


def test_dpo_fixed_negatives_are_drawn_once_per_example():
    from types import SimpleNamespace

    from recbole.data.interaction import Interaction

    from recbole_gflowgr.finetune.dpo import EXAMPLE

    model = ToyGR(seed=3)
    data = toy_batch(B=20, seed=4)
    train_data = SimpleNamespace(_dataset=SimpleNamespace(inter_feat=Interaction(dict(data))))
    trainer = bare("dpo", model)
    assert trainer.fixed is True  # the default: vanilla DPO's fixed preference data
    drawn = []
    for epoch in range(3):  # a new random stream each epoch, and the rows in another order
        trainer.begin_epoch(train_data, epoch)
        trainer.generator.manual_seed(100 + epoch)
        order = torch.randperm(20, generator=torch.Generator().manual_seed(epoch))[:8]
        batch = train_data._dataset.inter_feat[order]
        seen = {}

        def pair_loss_spy(model_, ref, interaction, pos, neg, beta, rows=None):
            seen["neg"] = neg
            return torch.zeros(pos.shape[0], requires_grad=True), {}

        import recbole_gflowgr.finetune.dpo as dpo_module

        original, dpo_module.pair_loss = dpo_module.pair_loss, pair_loss_spy
        try:
            trainer.dpo_loss(batch)
        finally:
            dpo_module.pair_loss = original
        assert torch.equal(batch[EXAMPLE], order)
        drawn.append(dict(zip(order.tolist(), seen["neg"][:, 0].tolist())))
    common = set(drawn[0]) & set(drawn[1]) | set(drawn[0]) & set(drawn[2])
    assert common and all(d[i] == drawn[0][i] for d in drawn[1:] for i in common if i in d)  # same example, same y-
    neg = trainer.negatives[:, 0]  # (20,) one per example: never the positive, the history or padding
    assert neg.shape == (20,) and (neg >= 1).all() and (neg != data["item_id"]).all()
    assert not (neg.unsqueeze(1) == data["item_id_list"]).any()
    other = bare("dpo", ToyGR(seed=3))  # a resumed run draws the same table (seeded by `seed` alone)
    other.begin_epoch(SimpleNamespace(_dataset=SimpleNamespace(inter_feat=Interaction(dict(data)))), 0)
    assert torch.equal(other.negatives, trainer.negatives)


def test_rl_rewards_count_only_semantic_levels():
    from recbole_gflowgr.finetune.common import item_rewards

    model = ToyGR()  # IDs (i//4 % 3, i//2 % 2, i % 2): the last column plays the disambiguation index
    batch = {"item_id_list": torch.tensor([[3, 0]]), "item_id_len": torch.tensor([1]), "item_length": torch.tensor([1]),
             "item_id": torch.tensor([1])}  # positive: trie item 0, codes (0, 0, 0)
    items = torch.tensor([[1, 7, 3, 2]])  # trie items 0, 6 (1, 1, 0), 2 (0, 1, 0), 1 (0, 0, 1)
    config = defaults(gflowgr_reward_cm=False, gflowgr_reward_aug=False)
    reward = item_rewards(model, None, batch, items, config)[0]
    # R_tok over the 2 semantic levels: item 6 shares only the last column with the positive -> 0 (floored at eps)
    assert reward.tolist() == pytest.approx([1.0, 1e-6, 0.5, 1.0])


def test_baselines_disable_the_policy_dropout_by_default():
    model = ToyGR(seed=0, dropout=0.3)
    bare("dpo", model)
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, nn.Dropout))
    kept = ToyGR(seed=0, dropout=0.3)
    bare("dpo", kept, finetune_disable_dropout=False)
    assert any(m.p == 0.3 for m in kept.modules() if isinstance(m, nn.Dropout))


def test_fine_tuning_log_probs_are_sft_softmax_at_the_model_temperature():
    # LETTER trains softmax(logits / tau): the fine-tuning policy must read that distribution over the allowed children
    model = ToyGR(seed=2).eval()
    model.temperature = 0.7
    batch = toy_batch(B=4, seed=5)
    items = torch.stack([batch["item_id"], batch["item_id"] % N_ITEMS + 1], 1)  # (B, 2)
    with torch.no_grad():
        steps = policy_and_reference(model, None, batch, items, steps=True)[0]  # (B, 2, L)
        ids, mask = model.encoder_inputs(batch)
        codes = model.target_tokens(items)  # (B, 2, L)
        for m in range(2):
            dec_in = model.t5._shift_right(codes[:, m])
            logits = model.t5(input_ids=ids, attention_mask=mask, decoder_input_ids=dec_in).logits / 0.7  # (B, L, V)
            nodes = model.trie.item_nodes[items[:, m] - 1]  # (B, L)
            for t in range(3):
                children = model.trie.children(t, nodes[:, t])  # (B, W)
                lo = model.trie.lo[t]
                allowed = logits[:, t, lo:lo + model.trie.width[t]].masked_fill(children < 0, float("-inf"))
                want = torch.log_softmax(allowed, 1).gather(1, (codes[:, m, t] - lo).unsqueeze(1)).squeeze(1)
                assert torch.allclose(steps[:, m, t], want, atol=1e-5)
        at_one = sequence_log_probs(model.t5, ids, mask, model.trie, items - 1)  # tau = 1: another distribution
        assert not torch.allclose(steps.sum(-1), at_one, atol=1e-4)
        beams, scores = constrained_beam_search(model.t5, ids, mask, model.trie, 3, temperature=0.7)
        again = sequence_log_probs(model.t5, ids, mask, model.trie, beams, temperature=0.7)
        assert torch.allclose(scores, again, atol=1e-5)  # beam scores = the same policy's teacher-forced log-probs


# ----- one epoch of each method through the CLI ------------------------------------------------------------
@pytest.mark.parametrize("method", ["sft-continued", "dpo", "s-dpo", "sprec", "ipa", "ppo", "grpo"])
def test_one_epoch_of_each_method_writes_a_result_row(method, monkeypatch):
    from gr_helpers import TINY_GR, patch_gr

    import run_recbole_gflowgr

    args = ["--model=TIGER", f"--finetune={method}", f"--config_files={os.path.join(REPO, 'properties', 'small.yaml')}",
            "--grpo_group_size=4", "--ipa_beams=4"] + patch_gr(monkeypatch) + TINY_GR
    assert run_recbole_gflowgr.main(args) == 0
    with open("res/tiny.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["finetune"] for r in rows] == ["sft", method]  # SFT trained (and cached) first, then fine-tuned
    row = rows[-1]
    assert row["epochs"] == 1 and row["pretrained"] and os.path.isfile(row["pretrained"])
    assert all(0.0 <= v <= 1.0 for v in row["test"].values())
    assert "sft" not in row["checkpoint"] and os.path.isfile(row["checkpoint"])
    state = torch.load(row["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert any(k.startswith("ppo_value_head.") for k in state) == (method == "ppo")


def test_impossible_hyperparameter_fails_before_any_training(capsys):
    from test_foundation import tiny_letter

    import run_recbole_gflowgr

    src, _, _ = tiny_letter()
    code = run_recbole_gflowgr.main(["--model=TIGER", "--dataset=tiny", f"--source_path={src}", "--finetune=grpo",
                                     "--grpo_group_size=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: grpo_group_size=1: expected an int >= 2") and "\n" not in err
    assert not os.path.exists("saved")  # no SFT was trained


def test_validated_values_do_not_shadow_recbole_trainer_attributes():
    import inspect
    import re

    from recbole.trainer import trainer as recbole_trainer

    source = inspect.getsource(recbole_trainer.Trainer) + inspect.getsource(recbole_trainer.AbstractTrainer)
    taken = set(re.findall(r"self\.(\w+)\s*=", source)) | set(dir(recbole_trainer.Trainer))
    for method, cls in TRAINERS.items():
        assert not set(cls.check_config(defaults(finetune=method))) & taken, method

