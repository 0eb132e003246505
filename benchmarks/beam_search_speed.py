"""Speed and agreement of ``constrained_beam_search`` against HF ``generate`` with a prefix-trie function.

TIGER-size T5 (4+4 layers, d_model 128, 6 heads x d_kv 64, d_ff 1024, vocab 2 + 4*256), random weights (seed 0),
eval mode; a random but realistic trie (skewed first code, collision index as the 4th code, like TIGER/LETTER);
random histories of up to 20 items x 4 tokens with variable lengths.

HF ``generate`` is configured to compute the same thing as ours: ``prefix_allowed_tokens_fn`` (a dict trie keyed by
the decoded prefix, the LETTER/MiniOneRec way) masks disallowed tokens, ``renormalize_logits=True`` re-applies
log_softmax after the mask (so the step score is the constrained log-softmax, not the unconstrained one),
``length_penalty=0`` (sequence score = plain sum), no EOS reachable, ``max_new_tokens=L``.  HF keeps 2*num_beams
candidates per step to make room for EOS; as EOS is never allowed this selects the same beams.

With ``--checkpoint saved/<run>.export.pth`` (any TIGER/LETTER run writes one) the model is that trained model with
its own trie, and the users are its dataset's test histories (the last <= 20 items before each user's last one,
read from ``dataset/<name>/<name>.inter``), in file order.

Ours runs on the users in groups of similar history length (``--length_groups``, the models' ``length_buckets``
key) and skips the decoder on last-level prefixes with a single child (beam_search.py); HF gets the same batches.

    python benchmarks/beam_search_speed.py --quick --threads 1   # --threads 1 on a busy shared CPU
    python benchmarks/beam_search_speed.py --n_items 12000 --eval_users 22363 --batch_size 256
    python benchmarks/beam_search_speed.py --checkpoint saved/TIGER-....export.pth --eval_users 0
"""
import argparse
import csv
import os
import sys
import time
from collections import defaultdict

import torch
from transformers import T5Config, T5ForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_gflowgr.model.beam_search import SemanticIDTrie, constrained_beam_search  # noqa: E402

LEVELS, CODES = 4, 256


def build_model(seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=2 + LEVELS * CODES, d_model=128, d_ff=1024, num_layers=4, num_decoder_layers=4,
                   num_heads=6, d_kv=64, feed_forward_proj="relu", dropout_rate=0.1,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


def build_codes(n_items, gen):
    """(n_items, 4) token ids: Zipf-like first code, uniform 2nd/3rd, 4th = index among items sharing 3 codes."""
    first = torch.multinomial(1.0 / torch.arange(1, CODES + 1).float() ** 0.7, n_items, replacement=True,
                              generator=gen)
    rest = torch.randint(0, CODES, (n_items, 2), generator=gen)
    c3 = torch.cat([first.unsqueeze(1), rest], dim=1)  # (n, 3)
    _, inv = torch.unique(c3, dim=0, return_inverse=True)
    order = torch.argsort(inv, stable=True)
    sorted_inv = inv[order]
    first_pos = torch.searchsorted(sorted_inv, sorted_inv)  # first index of each group in sorted order
    dup = torch.empty_like(inv)
    dup[order] = torch.arange(n_items) - first_pos
    if int(dup.max()) >= CODES:
        raise ValueError("too many collisions for 256 codes at level 4")
    codes = torch.cat([c3, dup.unsqueeze(1)], dim=1)
    return codes + 2 + torch.arange(LEVELS) * CODES  # level t tokens in [2 + 256 t, 2 + 256 (t+1))


def build_histories(n_users, codes, gen, max_items=20):
    """(n_users, 80) token ids of the users' last <= 20 items (4 tokens each), right padded, and the mask."""
    n_hist = torch.randint(1, max_items + 1, (n_users,), generator=gen)
    hist = torch.randint(0, codes.shape[0], (n_users, max_items), generator=gen)
    ids = codes[hist].reshape(n_users, max_items * LEVELS)  # (U, 80)
    mask = (torch.arange(max_items * LEVELS).unsqueeze(0) < (n_hist * LEVELS).unsqueeze(1)).long()
    return ids * mask, mask


def load_trained(path, data_path, n_users):
    """(t5, trie, codes, ids, mask) of an exported TIGER/LETTER run and its dataset's first ``n_users`` users' test
    histories as encoder inputs (B, S)."""
    from recbole_gflowgr.export import load_export
    from recbole_gflowgr.recommend import build_model

    export = load_export(path)
    model = build_model(export)
    name = export["dataset"]
    row = {token: i for i, token in enumerate(export["item_tokens"])}  # RecBole internal ids; 0 = [PAD]
    seqs = defaultdict(list)
    with open(os.path.join(data_path, name, f"{name}.inter")) as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        u, i, t = (header.index(c) for c in ("user_id:token", "item_id:token", "timestamp:float"))
        for rec in reader:
            seqs[rec[u]].append((float(rec[t]), row[rec[i]]))
    hist = [[i for _, i in sorted(v)][:-1][-20:] for v in list(seqs.values())[:n_users]]
    item_seq = torch.zeros(len(hist), 20, dtype=torch.long)
    for b, h in enumerate(hist):
        item_seq[b, :len(h)] = torch.tensor(h)
    ids = model.item_tokens[item_seq].flatten(1)  # (B, 20 * L), right padded
    print(f"trained model {path} ({export['model']} {export['finetune']} on {name}), {len(hist)} test histories")
    return model.t5, model.trie, model.trie.codes, ids, (ids != 0).long()


def dict_trie(codes):
    """prefix tuple -> list of allowed next tokens (a plain Python trie, as in LETTER / MiniOneRec)."""
    allowed = {}
    for row in codes.tolist():
        for t in range(len(row)):
            allowed.setdefault(tuple(row[:t]), set()).add(row[t])
    return {k: sorted(v) for k, v in allowed.items()}


def hf_top(model, ids, mask, allowed, item_of, beams, L):
    def prefix_fn(batch_id, sent):
        return allowed.get(tuple(sent.tolist()[1:]), [])  # drop the decoder start token

    out = model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, num_return_sequences=beams,
                         do_sample=False, max_new_tokens=L, min_new_tokens=L, length_penalty=0.0,
                         early_stopping=True, renormalize_logits=True, prefix_allowed_tokens_fn=prefix_fn,
                         output_scores=True, return_dict_in_generate=True)
    seqs = out.sequences[:, 1:1 + L].tolist()
    items = torch.tensor([item_of.get(tuple(s), -1) for s in seqs]).view(ids.shape[0], beams)
    return items, out.sequences_scores.view(ids.shape[0], beams).float()


def compare(model, trie, ids, mask, codes, beams, batch_size, groups, top=10):
    allowed, item_of = dict_trie(codes), {tuple(r): i for i, r in enumerate(codes.tolist())}
    ours_t = hf_t = enc_t = 0.0
    n_same = n_tie = n_users = 0
    max_diff = 0.0
    for s in range(0, ids.shape[0], batch_size):
        b_ids, b_mask = ids[s:s + batch_size], mask[s:s + batch_size]
        t0 = time.perf_counter()
        items, scores = constrained_beam_search(model, b_ids, b_mask, trie, beams, length_groups=groups)
        t1 = time.perf_counter()
        hf_items, hf_scores = hf_top(model, b_ids, b_mask, allowed, item_of, beams, trie.L)
        t2 = time.perf_counter()
        ours_t, hf_t = ours_t + t1 - t0, hf_t + t2 - t1
        model.get_encoder()(input_ids=b_ids, attention_mask=b_mask)  # the floor both share: the encoder
        enc_t += time.perf_counter() - t2
        max_diff = max(max_diff, float((scores[:, :top] - hf_scores[:, :top]).abs().max()))
        for b in range(b_ids.shape[0]):
            n_users += 1
            if items[b, :top].tolist() == hf_items[b, :top].tolist():
                n_same += 1
            else:  # accept only swaps between (near-)tied scores
                assert torch.allclose(scores[b, :top], hf_scores[b, :top], atol=1e-4), (
                    f"user {s + b}: ours {items[b, :top].tolist()} vs HF {hf_items[b, :top].tolist()}")
                n_tie += 1
    assert n_same + n_tie == n_users
    print(f"agreement: top-{top} identical for {n_same}/{n_users} users, "
          f"{n_tie} differ only by near-tied swaps; max |score diff| {max_diff:.2e}")
    print(f"ours: {n_users / ours_t:9.1f} users/s ({ours_t:.2f} s)")
    print(f"HF generate + prefix_allowed_tokens_fn: {n_users / hf_t:9.1f} users/s ({hf_t:.2f} s)")
    print(f"speed-up: {hf_t / ours_t:.1f}x   (encoder alone, shared by both: {n_users / enc_t:.1f} users/s; "
          f"speed-up of the decoding part: {(hf_t - enc_t) / max(ours_t - enc_t, 1e-9):.1f}x)")


def full_eval(model, trie, codes, n_users, beams, batch_size, groups, gen):
    ids, mask = build_histories(n_users, codes, gen)
    start = time.perf_counter()
    for s in range(0, n_users, batch_size):
        constrained_beam_search(model, ids[s:s + batch_size], mask[s:s + batch_size], trie, beams,
                                length_groups=groups)
    total = time.perf_counter() - start
    print(f"full evaluation: {n_users} users, {beams} beams, batch {batch_size}, {groups} length groups, "
          f"torch threads {torch.get_num_threads()}: {total:.1f} s "
          f"({n_users / total:.1f} users/s)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n_items", type=int, default=12000)
    p.add_argument("--compare_users", type=int, default=256,
                   help="users for the comparison with HF generate (0: none)")
    p.add_argument("--eval_users", type=int, default=22363, help="users for the full-evaluation timing")
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=256, help="users per batch (the models' eval_batch_size)")
    p.add_argument("--length_groups", type=int, default=4, help="ours: length groups per batch (length_buckets)")
    p.add_argument("--checkpoint", help="a trained run's *.export.pth: its model, trie and test histories")
    p.add_argument("--data_path", default="dataset", help="with --checkpoint: where <dataset>/<dataset>.inter is")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--quick", action="store_true", help="32 comparison users and 512 evaluation users")
    args = p.parse_args()
    if args.quick:
        args.compare_users, args.eval_users = min(args.compare_users, 32), min(args.eval_users, 512)
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    if args.checkpoint:
        model, trie, codes, ids, mask = load_trained(args.checkpoint, args.data_path, args.compare_users)
    else:
        model = build_model(0)
        codes = build_codes(args.n_items, gen)
        trie = SemanticIDTrie(codes)
    print(f"{trie}, torch threads {torch.get_num_threads()}")
    with torch.inference_mode():
        if not args.checkpoint:
            ids, mask = build_histories(max(args.compare_users, 2), codes, gen)
        constrained_beam_search(model, ids[:2], mask[:2], trie, args.beams)  # warm-up
        if args.compare_users:
            compare(model, trie, ids, mask, codes, args.beams, args.batch_size, args.length_groups)
        if args.eval_users:
            full_eval(model, trie, codes, args.eval_users, args.beams, args.batch_size, args.length_groups, gen)


if __name__ == "__main__":
    main()
