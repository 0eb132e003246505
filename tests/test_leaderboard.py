"""Leaderboard aggregation on hand-made rows."""
import json
import os

import pytest

from recbole_gflowgr import leaderboard


def row(model, finetune, seed, ndcg10, dataset="d", chash="h"):
    test = {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.05, "ndcg@10": ndcg10}
    return {"model": model, "finetune": finetune, "dataset": dataset, "seed": seed, "test": test, "valid": test,
            "wall_s": 10.0, "device": "cpu", "commit": "abc", "config_hash": chash}


ROWS = [row("TIGER", "sft", 42, 0.10), row("TIGER", "sft", 43, 0.11), row("TIGER", "sft", 44, 0.12),
        row("TIGER", "gflowgr-tb", 42, 0.20), row("TIGER", "gflowgr-tb", 43, 0.22), row("TIGER", "gflowgr-tb", 44, 0.23),
        row("TIGER", "dpo", 42, 0.105), row("SASRec", "none", 42, 0.3)]


def test_means_std_and_significance():
    lines = {(x["model"], x["finetune"]): x for x in leaderboard.summarise(ROWS)}
    mean, std = lines[("TIGER", "sft")]["ndcg@10"]
    assert mean == pytest.approx(0.11) and std == pytest.approx(0.01)
    assert lines[("TIGER", "gflowgr-tb")]["mark"]["ndcg@10"] is True  # beats sft on every seed, p < 0.05
    assert lines[("TIGER", "sft")]["mark"]["ndcg@10"] is False  # below gflowgr
    assert lines[("TIGER", "dpo")]["mark"]["ndcg@10"] is False  # one seed only: no test
    assert lines[("TIGER", "gflowgr-tb")]["mark"]["recall@5"] is False  # equal values are no improvement
    assert lines[("SASRec", "none")]["mark"] == {}


def test_each_method_is_tested_against_the_control():
    control = [row("TIGER", "sft-continued", 42, 0.15), row("TIGER", "sft-continued", 43, 0.16),
               row("TIGER", "sft-continued", 44, 0.17)]
    tie = [row("TIGER", "ppo", s, v) for s, v in ((42, 0.16), (43, 0.15), (44, 0.17))]  # not above the control
    lines = {(x["model"], x["finetune"]): x for x in leaderboard.summarise(ROWS + control + tie)}
    assert lines[("TIGER", "gflowgr-tb")]["control_mark"]["ndcg@10"] is True  # above the control on every seed
    assert lines[("TIGER", "ppo")]["control_mark"]["ndcg@10"] is False
    assert lines[("TIGER", "dpo")]["control_mark"]["ndcg@10"] is False  # one seed: no test
    assert lines[("TIGER", "sft-continued")]["control_mark"] == {} and lines[("TIGER", "sft")]["control_mark"] == {}
    assert lines[("TIGER", "gflowgr-tb")]["mark"]["ndcg@10"] is True  # the mark against the best other method stays
    text = leaderboard.markdown(list(lines.values()), paper=False)
    gfn = next(l for l in text.splitlines() if "| gflowgr-tb |" in l)
    assert "0.2167 ± 0.0153*†" in gfn
    assert "†" not in next(l for l in text.splitlines() if "| ppo |" in l)
    # without a control row nothing is marked against it
    assert all(not x["control_mark"] for x in leaderboard.summarise(ROWS))


def test_markdown_marks_and_paper_lines_are_labelled():
    text = leaderboard.markdown(leaderboard.summarise(ROWS + [row("TIGER", "sft", 42, 0.1, dataset="amazon-beauty")]))
    gfn = next(l for l in text.splitlines() if "| gflowgr-tb |" in l)
    assert "0.2167 ± 0.0153*" in gfn and "42,43,44" in gfn
    assert "| amazon-beauty | TIGER | sft (paper, reported) | 0.0354 | 0.0558 | 0.0234 | 0.0299 |" in text
    assert "| d | TIGER | dpo | 0.1000 | 0.2000 | 0.0500 | 0.1050 | 42 |" in text  # a single seed: no ± shown


def test_later_row_of_a_seed_replaces_earlier_and_cli_writes_files(tmp_path):
    os.makedirs("results")
    with open("results/d.jsonl", "w") as f:
        for r in ROWS + [row("TIGER", "dpo", 42, 0.5)]:
            f.write(json.dumps(r) + "\n")
    with open("results/tokenizer_stats.jsonl", "w") as f:  # other rows in results/ are skipped
        f.write(json.dumps({"dataset": "d", "tokenizer": "rqvae", "collision_rate": 0.1}) + "\n")
    leaderboard.main(["--out=RESULTS.md", "--csv=results/leaderboard.csv"])
    text = open("RESULTS.md").read()
    assert "| d | TIGER | dpo | 0.1000 | 0.2000 | 0.0500 | 0.5000 | 42 |" in text
    assert text.index("## Fine-tuning against its control") < text.index("## All runs")  # no control rows: header only
    assert len(open("results/leaderboard.csv").read().strip().splitlines()) == 1 + 4
    assert "finetune-curves" not in text
    os.makedirs("results/plots")
    open("results/plots/finetune-curves-d.png", "wb").close()  # python -m recbole_gflowgr.curves wrote one
    leaderboard.main(["--out=RESULTS.md"])
    text = open("RESULTS.md").read()
    assert "![d](results/plots/finetune-curves-d.png)" in text
    assert text.index("finetune-curves-d.png") < text.index("## All runs")  # in the control's section


def test_grid_variants_get_their_own_section_and_stay_out_of_the_main_table():
    import yaml

    from recbole_gflowgr import experiments

    with open("abl.yaml", "w") as f:
        yaml.safe_dump({"name": "abl", "title": "Ablation", "datasets": ["d"], "models": ["TIGER"],
                        "finetunes": ["gflowgr-tb"], "seeds": [42, 43],
                        "variants": {"full": {}, "no-cm": {"gflowgr_reward_cm": False}}}, f)
    cells = {(c["variant"], c["seed"]): c for c in experiments.expand(experiments.load_grid("abl.yaml"))
             if c["finetune"] != "sft"}
    rows = list(ROWS[:6])
    for seed, ndcg in ((42, 0.20), (43, 0.22)):  # the full method: Table 1's gflowgr-tb runs
        rows[3 + seed - 42] = dict(rows[3 + seed - 42], experiment="table1",
                                   experiment_cell=cells[("full", seed)].key)
    rows += [dict(row("TIGER", "gflowgr-tb", seed, 0.9, chash="v"), experiment="abl", experiment_variant="no-cm",
                  experiment_cell=cells[("no-cm", seed)].key) for seed in (42, 43)]
    os.makedirs("results")
    with open("results/d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    leaderboard.main(["--out=RESULTS.md", "--grids", "abl.yaml"])
    main, section = open("RESULTS.md").read().split("## Ablation (grid `abl`)")
    assert "no-cm" not in main and "0.9000" not in main  # a variant row is no rival of the main table's methods
    assert "| d | TIGER | gflowgr-tb | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 | 0.0500 ± 0.0000 | 0.2167 ± 0.0153* |" in main
    assert "| d | TIGER | gflowgr-tb | full | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 | 0.0500 ± 0.0000 | 0.2100 ± 0.0141 | (plain) | — | 42,43 | — |" in section
    assert "| d | TIGER | gflowgr-tb | no-cm | 0.1000 ± 0.0000 | 0.2000 ± 0.0000 | 0.0500 ± 0.0000 | 0.9000 ± 0.0000 | +0.6900 (p=0.01) | — | 42,43 | — |" in section
    # no control rows here: its column says so ('—'); tests/test_analysis_control.py fills it


def test_each_fine_tuning_row_is_paired_with_the_control_and_sft_of_its_own_checkpoint():
    def ft(finetune, seed, v, base="b", grid="table1", variant=None):
        r = row("TIGER", finetune, seed, v)
        r.update(pretrained=f"saved/sft/{base}-{seed}.pth", experiment=grid, experiment_variant=variant)
        return r

    sft = []
    for seed, v in ((42, 0.10), (43, 0.11), (44, 0.12)):
        r = row("TIGER", "sft", seed, v)
        r.update(sft_cache=f"saved/sft/b-{seed}.pth", stopped_early=True)
        sft.append(r)
    control = [ft("sft-continued", s, v) for s, v in ((42, 0.11), (43, 0.12), (44, 0.13))]
    gfn = [ft("gflowgr-tb", s, v) for s, v in ((42, 0.13), (43, 0.135), (44, 0.16))]  # +.02, +.015, +.03
    dpo = [ft("dpo", 42, 0.10)]
    other_base = [ft("ppo", 42, 0.5, base="other")]  # its checkpoint has no control: left out
    variant = [ft("sft-continued", 42, 0.08, grid="g", variant="v"), ft("sft-continued", 42, 0.09, grid="g"),
               ft("gflowgr-tb", 42, 0.095, grid="g", variant="v"),  # paired with the control of its own variant
               ft("gflowgr-db", 42, 0.095, grid="g", variant="w")]  # no control of variant w: the grid's plain one
    for r in control + gfn:
        r["config"] = {"finetune": r["finetune"], "finetune_epochs": 10, "gflowgr_lambda": 0.1}
    sweep = [ft("gflowgr-tb", 43, 0.5, grid="sweep", variant="lam"), ft("gflowgr-tb", 44, 0.6, grid="sweep2")]
    sweep[0]["config"] = {"finetune": "gflowgr-tb", "finetune_epochs": 10, "gflowgr_lambda": 0.5}  # table1's control
    sweep[1]["config"] = {"finetune": "gflowgr-tb", "finetune_epochs": 3, "gflowgr_lambda": 0.1}  # another budget
    items = {(x["grid"], x["finetune"]): x for x in leaderboard.against_control(
        sft + control + gfn + dpo + other_base + variant + sweep)}
    assert set(items) == {("table1", "gflowgr-tb"), ("table1", "dpo"), ("g", "gflowgr-tb"), ("g", "gflowgr-db"),
                          ("sweep", "gflowgr-tb")}  # sweep2's budget has no control run
    assert items[("sweep", "gflowgr-tb")]["control"] == pytest.approx(0.12)  # table1's control of seed 43
    x = items[("table1", "gflowgr-tb")]
    assert x["seeds"] == [42, 43, 44] and x["control"] == pytest.approx(0.12) and x["sft"] == pytest.approx(0.11)
    assert x["vs_control"].startswith("+0.0217 (p=") and x["p"] < 0.05 and x["verdict"] == "**beats its control**"
    assert x["vs_sft"].startswith("+0.0317") and x["sft_converged"] == [True, True, True]
    assert items[("table1", "dpo")]["verdict"] == "below its control (1 seed: no test)"
    assert items[("g", "gflowgr-tb")]["control"] == pytest.approx(0.08)
    assert items[("g", "gflowgr-db")]["control"] == pytest.approx(0.09)
    assert items[("g", "gflowgr-tb")]["sft"] == pytest.approx(0.10)  # the same checkpoint: grid g's SFT row is seed 42's
    text = leaderboard.control_markdown(list(items.values()))
    lines = text.splitlines()
    assert lines[2].startswith("| d | TIGER | gflowgr-db [w] | g | 42 |")  # grid order, GFlowGR first
    assert "| d | TIGER | gflowgr-tb | table1 | 42,43,44 | 0.1417 | 0.1200 | 0.1100 |" in text and "| yes |" in text


def test_rows_of_a_grid_with_its_own_config_stay_out_of_the_main_table():
    """A section grid with a grid-level config (another SFT recipe, like tb-control-cpu) has no cell of the plain
    methods: its plain-labelled rows (its control, which re-keying labels plain) stay out of the main table."""
    import yaml

    with open("other.yaml", "w") as f:
        yaml.safe_dump({"name": "other", "title": "Other base", "datasets": ["d"], "models": ["TIGER"],
                        "finetunes": ["sft-continued", "gflowgr-tb"], "seeds": [42], "config": {"learning_rate": 0.5},
                        "variants": {"v": {"gflowgr_lambda": 0.5}}}, f)
    rows = list(ROWS) + [dict(row("TIGER", "sft-continued", 42, 0.777, chash="o"), experiment="other"),
                         dict(row("TIGER", "gflowgr-tb", 42, 0.888, chash="p"), experiment="other",
                              experiment_variant="v")]
    os.makedirs("results")
    with open("results/d.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    leaderboard.main(["--out=RESULTS.md", "--grids", "other.yaml"])
    main = open("RESULTS.md").read().split("## All runs")[1].split("## Other base")[0]
    assert "0.7770" not in main and "0.8880" not in main
    assert "| d | TIGER | gflowgr-tb | 0.1000 ± 0.0000 |" in main  # the plain methods' rows are still there
