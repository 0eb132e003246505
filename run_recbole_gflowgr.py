"""Train and evaluate a model through RecBole, append a result row to results/<dataset>.jsonl.

    python run_recbole_gflowgr.py --model=SASRec --dataset=ml-100k
    python run_recbole_gflowgr.py --model=TIGER --dataset=amazon-beauty --config_files=properties/gflowgr.yaml

Any other ``--key=value`` is a RecBole / recbole_gflowgr config key (see properties/*.yaml), e.g. ``--epochs=5``.
"""
import argparse
import sys

from recbole_gflowgr.foundation.errors import cli


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default=None, help="TIGER, LETTER or a RecBole model (SASRec, ...)")
    parser.add_argument("--dataset", "-d", default=None, help="amazon-beauty, yelp, industrial-scientific, ml-100k")
    parser.add_argument("--config_files", default=None, help="yaml files, separated by spaces or commas")
    args, rest = parser.parse_known_args(argv)
    rest = ["--resume=True" if a == "--resume" else a for a in rest]  # the bare flag (README "Resume")
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognised argument(s) {' '.join(bad)}: config keys are given as --key=value")
    files = args.config_files.replace(",", " ").split() if args.config_files else None

    from recbole_gflowgr.quick_start import run

    row = run(args.model, args.dataset, config_file_list=files, cmd_args=rest)
    if row is None:  # a machine of a multi-node run without global rank 0: that machine writes the row
        print("done: the result row is written by the machine of global rank 0 (offset=0)")
        return 0
    print("test:", " ".join(f"{k}={v:.4f}" for k, v in row["test"].items()), f"wall_s={row['wall_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
