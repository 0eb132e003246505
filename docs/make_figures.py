"""Figures of the documentation: ``python docs/make_figures.py`` writes docs/pipeline.png (README's pipeline).

Boxes and arrows only (matplotlib, Agg backend, no data read), so the figure is the same on every machine.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA, TOKEN, MODEL, TUNE, EVAL, CM = "#dbe9f6", "#fde7c8", "#d9f0d3", "#f6d5e5", "#e6e0f3", "#eeeeee"

# name: (x centre, y centre, width, height, colour, text)
BOXES = {
    "text": (1.2, 3.0, 1.9, 0.9, DATA, "item text\n(title, categories, ...)"),
    "emb": (3.6, 3.0, 2.0, 0.9, DATA, "text embedding\n(all-MiniLM-L6-v2)"),
    "tok": (6.1, 3.0, 2.4, 0.9, TOKEN, "tokenizer: RQ-VAE (TIGER)\nor LETTER (+ CM alignment)"),
    "ids": (9.3, 3.0, 2.0, 0.9, TOKEN, "semantic IDs\n3-4 codes per item"),
    "sft": (9.3, 1.25, 2.0, 0.9, MODEL, "T5 encoder-decoder\nTIGER / LETTER SFT"),
    "ft": (6.1, 1.25, 2.9, 1.5, TUNE, "fine-tuning\nGFlowGR TB / DB / SubTB\n(CM-driven sampler + reward)\n"
                                      "DPO, S-DPO, SPRec, IPA, PPO, GRPO\nsft-continued (control)"),
    "beam": (3.2, 1.25, 1.9, 0.9, MODEL, "trie-constrained\nbeam search"),
    "eval": (1.0, 1.25, 1.7, 0.9, EVAL, "RecBole evaluator\nfull-ranking R / N@K"),
    "hist": (9.3, -0.55, 2.0, 0.9, DATA, "user histories\n(RecBole dataset)"),
    "cm": (6.1, -0.55, 2.4, 0.9, CM, "collaborative model\n(RecBole SASRec)"),
}
# (from, to, from side, to side, style)
ARROWS = [
    ("text", "emb", "r", "l", "-"), ("emb", "tok", "r", "l", "-"), ("tok", "ids", "r", "l", "-"),
    ("ids", "sft", "b", "t", "-"), ("hist", "sft", "t", "b", "-"), ("sft", "ft", "l", "r", "-"),
    ("ft", "beam", "l", "r", "-"), ("beam", "eval", "l", "r", "-"), ("hist", "cm", "l", "r", "--"),
    ("cm", "ft", "t", "b", "--"),
]


def _anchor(name, side):
    x, y, w, h = BOXES[name][:4]
    return {"l": (x - w / 2, y), "r": (x + w / 2, y), "t": (x, y + h / 2), "b": (x, y - h / 2)}[side]


def pipeline(path):
    """Draw the data path from item text to RecBole's metrics into ``path`` (PNG)."""
    fig, ax = plt.subplots(figsize=(11, 4.6), dpi=110)
    for x, y, w, h, colour, text in BOXES.values():
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04,rounding_size=0.12",
                                    facecolor=colour, edgecolor="#444444", linewidth=1.1))
        ax.text(x, y, text, ha="center", va="center", fontsize=8.6)
    for a, b, sa, sb, style in ARROWS:
        ax.add_patch(FancyArrowPatch(_anchor(a, sa), _anchor(b, sb), arrowstyle="-|>", mutation_scale=13,
                                     linestyle=style, color="#333333", linewidth=1.1))
    ax.text(6.2, 0.25, "scores: sampler, R_cm,\nIPA / PPO / GRPO rewards", fontsize=7.4, color="#555555", ha="left",
            va="center")
    ax.set_xlim(0, 10.6)
    ax.set_ylim(-1.1, 3.6)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    out = os.path.join(HERE, "pipeline.png")
    pipeline(out)
    print(out)
