"""How popular are the valid and the test targets? (RecBole's leave-one-out split: every user's last item is the
test target, the one before it the valid target, the rest is training.)

    python benchmarks/split_targets.py                       # amazon-beauty, industrial-scientific, yelp
    python benchmarks/split_targets.py --datasets amazon-beauty

Prints, per dataset and split, the share of targets that occur fewer than ``--rare`` times as a training item (in
the training part of any user's sequence), the share never seen there (cold), and the median training count.
Test targets are later in time than valid ones, so when they are rarer in training a model that leans on
popularity loses more on test than on valid: one candidate explanation of a large valid -> test drop. Reads the
LETTER-format json only (no model, seconds on CPU).

    python benchmarks/split_targets.py --checkpoints=saved/sft/amazon-beauty-TIGER-<hash>.pth,saved/collaborative/amazon-beauty-SASRec-<hash>.pth

measures whether a model does lean on popularity: per checkpoint (any RecBole checkpoint of a LETTER-format dataset,
ours or RecBole's models; run where its ``data_path`` is), NDCG@10 on valid and on test per bucket of the target's
training count (``--buckets`` edges), from RecBole's own evaluation of its loaders, and the share of its valid -> test
drop that the buckets' mix explains: test NDCG@10 if every bucket kept its valid NDCG@10 (``mix``), against both.
"""
import argparse
import collections
import statistics
import sys

from recbole_gflowgr.data.convert import letter_sequences
from recbole_gflowgr.foundation.errors import ConfigError, cli


def training_counts(sequences):
    """Counter of each item's occurrences in the training part (all but the last two) of every user's sequence."""
    return collections.Counter(i for seq in sequences.values() for i in seq[:-2])


def split_target_stats(sequences, rare=5):
    """{split: {"targets", "rare", "cold", "median_count"}} for the valid and test targets of ``sequences``
    ({user: [item, ...]} in time order, each with >= 3 items)."""
    count = training_counts(sequences)
    out = {}
    for split, pos in (("valid", -2), ("test", -1)):
        targets = [seq[pos] for seq in sequences.values()]
        n = len(targets)
        out[split] = {"targets": n,
                      "rare": sum(count[t] < rare for t in targets) / n,
                      "cold": sum(count[t] == 0 for t in targets) / n,
                      "median_count": statistics.median(count[t] for t in targets)}
    return out


def bucket_names(edges):
    """Names of the buckets of training counts cut at ``edges`` (ascending, > 0): [0, e1), [e1, e2), ..., [ek, inf)."""
    bounds = [0] + list(edges)
    return [f"{a}-{b - 1}" if b - 1 > a else str(a) for a, b in zip(bounds, bounds[1:])] + [f"{bounds[-1]}+"]


def by_bucket(values, counts, edges):
    """{bucket: (share of targets, mean of ``values``)} over the buckets of ``counts`` (the targets' training counts,
    one per value), None as the mean of an empty bucket."""
    import numpy as np

    values, where = np.asarray(values, dtype=float), np.searchsorted(list(edges), counts, side="right")
    return {name: (float((where == b).mean()), float(values[where == b].mean()) if (where == b).any() else None)
            for b, name in enumerate(bucket_names(edges))}


def mix_prediction(valid_buckets, test_buckets):
    """Test mean predicted by keeping each bucket's valid mean and taking test's shares (buckets empty on valid
    drop out, their share spread over the rest)."""
    pairs = [(test_buckets[b][0], valid_buckets[b][1]) for b in test_buckets if valid_buckets[b][1] is not None]
    total = sum(share for share, _ in pairs)
    return sum(share * mean for share, mean in pairs) / total


def per_user_ndcg(path, k=10, beam_size=None):
    """{split: (NDCG@k per user, target item tokens)} of a checkpoint, from RecBole's evaluation (its ``rec.topk``,
    one positive per user under the leave-one-out split), checked against the evaluator's own mean."""
    import torch

    from recbole_gflowgr.quick_start import rebuild_run
    from recbole_gflowgr.registry import get_trainer

    def adjust(config):
        config["topk"] = sorted(set(config["topk"]) | {k})
        if beam_size and "beam_size" in config:  # a generative model's beam, wider than it was trained with
            config["beam_size"] = beam_size

    config, model, dataset, (_, valid_data, test_data) = rebuild_run(path, f"--checkpoints: {path}", adjust)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"], config)(config, model)
    evaluate, struct, out = trainer.evaluator.evaluate, {}, {}

    def capture(data):  # RecBole's evaluator, keeping the per-user hits it averages
        struct["topk"] = data.get("rec.topk")  # (n_users, max_k + 1)
        return evaluate(data)

    trainer.evaluator.evaluate = capture
    try:
        for split, loader in (("valid", valid_data), ("test", test_data)):
            result = trainer.evaluate(loader, load_best_model=False, show_progress=False)
            hits = struct["topk"][:, :k].float()  # (n_users, k): the target at rank r, then the positive count
            ndcg = (hits / torch.log2(torch.arange(2, k + 2).float())).sum(1)  # (n_users,) one positive each
            assert abs(float(ndcg.mean()) - result[f"ndcg@{k}"]) < 1e-3, (float(ndcg.mean()), result)
            items = torch.cat([batch[3] for batch in loader])  # (n_users,) targets, in the evaluation's order
            out[split] = (ndcg.numpy(), [str(t) for t in dataset.id2token(dataset.iid_field, items.numpy())])
    finally:
        trainer.evaluator.evaluate = evaluate
    return config, out


def model_report(path, edges, k=10, beam_size=None):
    """Lines of NDCG@k by target training count on valid and test, and the drop the mix explains."""
    config, splits = per_user_ndcg(path, k, beam_size)
    sequences = letter_sequences(config["dataset"], config["source_path"])
    if sequences is None:
        raise ConfigError(f"--checkpoints: {path} is of dataset {config['dataset']}, not in LETTER's json format")
    count = training_counts(sequences)
    known = {i for seq in sequences.values() for i in seq}
    beam = f", beam {config['beam_size']}" if "beam_size" in config else ""
    rows, name = {}, f"{config['dataset']} {config['model']} ({path}{beam})"
    for split, (ndcg, targets) in splits.items():
        assert all(t in known for t in targets), f"{path}: target tokens are not the dataset's item ids"
        rows[split] = by_bucket(ndcg, [count[t] for t in targets], edges)
        rows[split]["all"] = (1.0, float(ndcg.mean()))
    lines = [f"{name}: NDCG@{k} by the target's training count (share of targets valid / test)"]
    for b in rows["test"]:
        (sv, v), (st, t) = rows["valid"][b], rows["test"][b]
        show = lambda x: "-" if x is None else f"{x:.4f}"
        lines.append(f"  {b:>6}: valid {show(v)} ({sv:.1%})  test {show(t)} ({st:.1%})")
    valid, test = rows["valid"].pop("all")[1], rows["test"].pop("all")[1]
    mix = mix_prediction(rows["valid"], rows["test"])
    share = (valid - mix) / (valid - test) if valid != test else float("nan")
    lines.append(f"  test/valid {test / valid:.2f}; mix (valid NDCG per bucket, test's shares) {mix:.4f}: the mix "
                 f"explains {share:.0%} of the valid -> test drop")
    return lines


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="amazon-beauty,industrial-scientific,yelp")
    parser.add_argument("--rare", type=int, default=5, help="a target is rare below this training count")
    parser.add_argument("--checkpoints", default="", help="comma-separated RecBole checkpoints: NDCG@10 by bucket")
    parser.add_argument("--buckets", default="1,5,20", help="training-count edges of the buckets")
    parser.add_argument("--beam_size", type=int, default=None, help="TIGER/LETTER: evaluate with this beam")
    args = parser.parse_args(argv)
    if args.checkpoints:
        try:
            edges = [int(e) for e in args.buckets.split(",")]
        except ValueError:
            edges = []
        if not edges or edges != sorted(set(edges)) or edges[0] < 1:
            raise ConfigError(f"--buckets={args.buckets}: expected ascending training counts >= 1, e.g. 1,5,20")
        for path in args.checkpoints.split(","):
            print("\n".join(model_report(path, edges, beam_size=args.beam_size)), flush=True)
        return 0
    for name in args.datasets.split(","):
        sequences = letter_sequences(name)  # an unknown name: error: ..., exit 2
        if sequences is None:
            print(f"{name}: skipped (no LETTER-format <Prefix>.inter.json in its source folder)")
            continue
        for split, s in split_target_stats(sequences, args.rare).items():
            print(f"{name} {split}: {s['targets']} targets, {s['rare']:.1%} seen < {args.rare} times in training, "
                  f"{s['cold']:.1%} never, median training count {s['median_count']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
