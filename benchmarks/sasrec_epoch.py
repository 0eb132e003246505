"""RecBole SASRec training speed on CPU, before / after our fix of RecBole's global anomaly detection.

Importing any RecBole sequential model imports ``sine.py``, which calls ``torch.autograd.set_detect_anomaly(True)``
(see ``recbole_gflowgr/foundation/compat.py``). This script trains RecBole's SASRec (RecBole defaults, CE loss) on ml-100k
for one epoch with anomaly detection on (RecBole as shipped) and off (with recbole_gflowgr), same data, same
process, and prints both epoch times and the ratio.

    python benchmarks/sasrec_epoch.py [--dataset=ml-100k] [--batches=0 (= whole epoch)]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import recbole_gflowgr  # noqa: E402,F401
from recbole.utils import init_seed  # noqa: E402
from recbole_gflowgr.quick_start import load_config, prepare_data  # noqa: E402
from recbole_gflowgr.registry import get_model  # noqa: E402


def epoch_time(config, train_data, dataset, anomaly, max_batches):
    init_seed(config["seed"], True)
    model = get_model("SASRec")(config, dataset)
    opt = torch.optim.Adam(model.parameters(), lr=config["learning_rate"])
    torch.autograd.set_detect_anomaly(anomaly)
    start, n = time.perf_counter(), 0
    for n, batch in enumerate(train_data, 1):
        opt.zero_grad()
        model.calculate_loss(batch).backward()
        opt.step()
        if max_batches and n >= max_batches:
            break
    torch.autograd.set_detect_anomaly(False)
    return time.perf_counter() - start, n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--batches", type=int, default=0, help="stop after this many batches (0 = whole epoch)")
    args = parser.parse_args()
    config = load_config("SASRec", args.dataset, config_dict={"show_progress": False})
    _, (train_data, _, _) = prepare_data(config)
    print(f"SASRec on {args.dataset}, batch {config['train_batch_size']}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    slow, n = epoch_time(config, train_data, train_data._dataset, True, args.batches)
    fast, _ = epoch_time(config, train_data, train_data._dataset, False, args.batches)
    print(f"{n} batches: anomaly detection on (RecBole as shipped) {slow:.1f} s, off (recbole_gflowgr) {fast:.1f} s, "
          f"speed-up {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
