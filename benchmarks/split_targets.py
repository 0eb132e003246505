"""How popular are the valid and the test targets? (RecBole's leave-one-out split: every user's last item is the
test target, the one before it the valid target, the rest is training.)

    python benchmarks/split_targets.py                       # amazon-beauty, industrial-scientific, yelp
    python benchmarks/split_targets.py --datasets amazon-beauty

Prints, per dataset and split, the share of targets that occur fewer than ``--rare`` times as a training item (in
the training part of any user's sequence), the share never seen there (cold), and the median training count.
Test targets are later in time than valid ones, so when they are rarer in training a model that leans on
popularity loses more on test than on valid: one candidate explanation of a large valid -> test drop. Reads the
LETTER-format json only (no model, seconds on CPU).
"""
import argparse
import collections
import statistics
import sys

from recbole_gflowgr.data.convert import letter_sequences
from recbole_gflowgr.foundation.errors import cli


def split_target_stats(sequences, rare=5):
    """{split: {"targets", "rare", "cold", "median_count"}} for the valid and test targets of ``sequences``
    ({user: [item, ...]} in time order, each with >= 3 items)."""
    count = collections.Counter(i for seq in sequences.values() for i in seq[:-2])  # training items
    out = {}
    for split, pos in (("valid", -2), ("test", -1)):
        targets = [seq[pos] for seq in sequences.values()]
        n = len(targets)
        out[split] = {"targets": n,
                      "rare": sum(count[t] < rare for t in targets) / n,
                      "cold": sum(count[t] == 0 for t in targets) / n,
                      "median_count": statistics.median(count[t] for t in targets)}
    return out


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="amazon-beauty,industrial-scientific,yelp")
    parser.add_argument("--rare", type=int, default=5, help="a target is rare below this training count")
    args = parser.parse_args(argv)
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
