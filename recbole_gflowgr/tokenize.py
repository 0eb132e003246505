"""Item semantic IDs from item texts, without RecBole (LETTER additionally trains/loads RecBole's SASRec):

    python -m recbole_gflowgr.tokenize --dataset=amazon-beauty --tokenizer=rqvae
    python -m recbole_gflowgr.tokenize --dataset=yelp --tokenizer=letter --seed=43 --epochs=100

writes ``<data_path>/<dataset>/tokenizer/<tokenizer>-<config hash>/`` with index.json (LETTER's ``*.index.json``
format), stats.json and config.json. Any other ``--key=value`` overrides a key of
recbole_gflowgr/properties/tokenizer/<tokenizer>.yaml (values are read as YAML: --layers=[256,128]).
"""
import argparse
import logging
import sys

import yaml

from recbole_gflowgr.foundation.errors import cli


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", "-d", required=True, help="amazon-beauty, yelp, industrial-scientific, ml-100k")
    parser.add_argument("--tokenizer", "-t", required=True, help="rqvae (TIGER) or letter (LETTER)")
    parser.add_argument("--data_path", default="dataset", help="root of the converted datasets (default: dataset)")
    parser.add_argument("--source_path", default=None, help="folder of the dataset's source files")
    parser.add_argument("--source_prefix", default=None, help="file prefix in source_path (e.g. Beauty)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    args, rest = parser.parse_known_args(argv)
    bad = [a for a in rest if not (a.startswith("--") and "=" in a)]
    if bad:
        parser.error(f"unrecognised argument(s) {' '.join(bad)}: tokenizer keys are given as --key=value")
    overrides = {"seed": args.seed}
    for arg in rest:
        key, value = arg[2:].split("=", 1)
        overrides[key] = yaml.safe_load(value)
    from recbole_gflowgr.data import dataset_settings  # the same dataset settings as every run's nested tokenizer

    overrides.update({k: v for k, v in dataset_settings(vars(args), args.data_path).items() if k != "data_path"})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from recbole_gflowgr.quick_start import sasrec_item_embeddings  # LETTER's: the collaborative SASRec's
    from recbole_gflowgr.tokenizer import get_semantic_ids

    ids = get_semantic_ids(args.dataset, args.tokenizer, args.data_path, overrides, args.device,
                           cf_embeddings=sasrec_item_embeddings)
    s = ids.stats
    usage = " ".join(f"{lv['used']}/{lv['size']}" for lv in s["levels"])
    print(f"{ids.path}: {s['n_items']} items, collision rate before disambiguation {s['collision_rate']:.4%}, "
          f"max group {s['max_collision_group']}, codes used per level {usage}, wall_s={s['wall_s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
