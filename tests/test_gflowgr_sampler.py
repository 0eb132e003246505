"""GFlowGR's adaptive curriculum sampler (pure, CPU): never an excluded item, the window equals a full sort, the
curriculum's mean score rises, schedules, ties, random mode and errors."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.finetune.gflowgr import AdaptiveSampler


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 5), n_items=st.integers(2, 60), n_aug=st.integers(0, 6), seed=st.integers(0, 10 ** 6),
       p_excl=st.floats(0.0, 0.9), progress=st.floats(0.0, 1.0), mode=st.sampled_from(["adaptive", "random"]),
       schedule=st.sampled_from(["linear", "cosine"]), window=st.floats(0.01, 1.0), ties=st.booleans())
def test_sampler_never_returns_excluded(b, n_items, n_aug, seed, p_excl, progress, mode, schedule, window, ties):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (b, n_items), generator=g).float() if ties else torch.randn(b, n_items, generator=g)
    exclude = torch.rand(b, n_items, generator=g) < p_excl  # (B, n_items) history
    exclude[:, 0] = True  # padding item
    exclude[torch.arange(b), torch.randint(1, n_items, (b,), generator=g)] = True  # positive
    n_allowed = (~exclude).sum(1)
    sampler = AdaptiveSampler(n_aug, mode=mode, window=window, schedule=schedule)
    if (n_allowed < n_aug).any():
        with pytest.raises(ValueError, match="gflowgr_n_aug"):
            sampler.sample(scores, exclude, progress, generator=g)
        return
    out = sampler.sample(scores, exclude, progress, generator=g)
    assert out.shape == (b, n_aug) and out.dtype == torch.long
    if n_aug:
        assert not exclude.gather(1, out).any()
        assert all(len(set(row)) == n_aug for row in out.tolist())


def _window_mask_by_full_sort(sampler, scores, exclude, p):
    """Reference: the curriculum window from a full sort of every row (what the partial sort must equal)."""
    n_allowed = (~exclude).sum(1)
    s = torch.nan_to_num(scores.float(), nan=-3e38, posinf=3e38, neginf=-3e38).masked_fill(exclude, math.inf)
    ranked = s.sort(dim=1).values
    lo, hi = sampler.window_bounds(p)
    n = n_allowed.double()
    first = torch.minimum(torch.floor(lo * n).long(), n_allowed - 1)
    stop = torch.minimum(torch.ceil(hi * n).long(), n_allowed)
    k = (stop - first).clamp(min=1)
    m = torch.clamp(k, min=sampler.n_aug)
    begin = torch.minimum((first - (m - k) // 2).clamp(min=0), n_allowed - m)
    s_lo, s_hi = ranked.gather(1, begin[:, None]), ranked.gather(1, (begin + m - 1)[:, None])
    return ~exclude & (s >= s_lo) & (s <= s_hi)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 5), n_items=st.integers(3, 80), n_aug=st.integers(1, 4), seed=st.integers(0, 10 ** 6),
       p_excl=st.floats(0.0, 0.6), progress=st.floats(0.0, 1.0), window=st.floats(0.01, 1.0), ties=st.booleans(),
       nans=st.booleans())
def test_sampler_window_equals_full_sort(b, n_items, n_aug, seed, p_excl, progress, window, ties, nans):
    """The window comes from a partial sort (topk from the nearer end): the same mask as a full sort, with ties,
    NaN scores and excluded items, at every point of the curriculum."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (b, n_items), generator=g).float() if ties else torch.randn(b, n_items, generator=g)
    if nans:
        scores[torch.rand(b, n_items, generator=g) < 0.1] = float("nan")
    exclude = torch.rand(b, n_items, generator=g) < p_excl
    exclude[:, 0] = True
    if ((~exclude).sum(1) < n_aug).any():
        return
    sampler = AdaptiveSampler(n_aug, window=window)
    got = sampler._window_mask(scores, exclude, (~exclude).sum(1), progress)
    assert torch.equal(got, _window_mask_by_full_sort(sampler, scores, exclude, progress))


def test_sampler_curriculum_mean_score_rises():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 500, generator=g)
    exclude = torch.rand(64, 500, generator=g) < 0.2
    exclude[:, 0] = True
    sampler = AdaptiveSampler(8, start=0.0, end=0.9, window=0.1)
    means = []
    for p in (0.0, 0.5, 1.0):
        out = sampler.sample(scores, exclude, p, generator=torch.Generator().manual_seed(1))
        means.append(scores.gather(1, out).mean().item())
        # sampled items lie in the quantile window of each user's allowed scores
        lo, hi = sampler.window_bounds(p)
        allowed = scores.masked_fill(exclude, float("nan"))
        q_lo, q_hi = allowed.nanquantile(max(lo - 0.01, 0), dim=1), allowed.nanquantile(min(hi + 0.01, 1), dim=1)
        got = scores.gather(1, out)
        assert ((got >= q_lo[:, None]) & (got <= q_hi[:, None])).all()
    assert means[0] < means[1] < means[2]
    # deterministic given a generator
    a = sampler.sample(scores, exclude, 0.3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, sampler.sample(scores, exclude, 0.3, generator=torch.Generator().manual_seed(5)))


def test_sampler_schedules_and_window():
    lin = AdaptiveSampler(2, start=0.1, end=0.9, window=0.2)
    assert lin.centre(0.5) == pytest.approx(0.5)
    assert lin.window_bounds(1.0) == pytest.approx((0.8, 1.0))  # clamped inside [0, 1]
    cos = AdaptiveSampler(2, start=0.0, end=1.0, schedule="cosine")
    assert cos.centre(0.25) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert cos.centre(0.0) == 0.0 and cos.centre(1.0) == pytest.approx(1.0)


def test_sampler_widens_small_window():
    scores = torch.arange(10.0).unsqueeze(0)  # (1, 10)
    exclude = torch.zeros(1, 10, dtype=torch.bool)
    exclude[0, [0, 2, 4, 6, 8]] = True  # allowed: 1, 3, 5, 7, 9
    out = AdaptiveSampler(4, window=0.1).sample(scores, exclude, 1.0, generator=torch.Generator().manual_seed(0))
    assert sorted(out[0].tolist()) == [3, 5, 7, 9]  # the 4 highest allowed items
    out = AdaptiveSampler(5, window=0.1).sample(scores, exclude, 0.0)
    assert sorted(out[0].tolist()) == [1, 3, 5, 7, 9]


def test_sampler_random_mode_covers_allowed_items():
    scores = torch.randn(1, 10)
    exclude = torch.zeros(1, 10, dtype=torch.bool)
    exclude[0, [0, 3]] = True
    sampler = AdaptiveSampler(2, mode="random")
    g = torch.Generator().manual_seed(0)
    out = sampler.sample(scores.expand(4000, 10), exclude.expand(4000, 10), 0.7, generator=g)  # (4000, 2)
    counts = torch.bincount(out.flatten(), minlength=10)
    assert counts[0] == 0 and counts[3] == 0
    allowed = counts[[1, 2, 4, 5, 6, 7, 8, 9]].float()
    assert (allowed > 0).all() and ((allowed / 1000.0 - 1).abs() < 0.15).all()  # 8000 draws / 8 items


def test_sampler_ties_are_not_broken_by_index():
    scores = torch.zeros(2000, 20)  # every item tied: the window is every allowed item
    exclude = torch.zeros(2000, 20, dtype=torch.bool)
    exclude[:, 0] = True
    out = AdaptiveSampler(1, window=0.1).sample(scores, exclude, 0.0, generator=torch.Generator().manual_seed(0))
    assert set(out.flatten().tolist()) == set(range(1, 20))


def test_sampler_zero_aug_and_errors():
    out = AdaptiveSampler(0).sample(torch.randn(3, 5), torch.ones(3, 5, dtype=torch.bool), 0.5)
    assert out.shape == (3, 0) and out.dtype == torch.long
    with pytest.raises(ValueError, match="gflowgr_n_aug") as e:
        AdaptiveSampler(-1)
    assert isinstance(e.value, ConfigError)
    for kwargs, key in [({"mode": "hard"}, "gflowgr_sampler"), ({"start": -0.1}, "gflowgr_curriculum_start"),
                        ({"end": 1.5}, "gflowgr_curriculum_end"), ({"window": 0.0}, "gflowgr_curriculum_window"),
                        ({"window": 1.1}, "gflowgr_curriculum_window"),
                        ({"schedule": "step"}, "gflowgr_curriculum_schedule")]:
        with pytest.raises(ValueError, match=key):
            AdaptiveSampler(2, **kwargs)
    with pytest.raises(ValueError, match="gflowgr_n_aug"):
        AdaptiveSampler(2.5)
    exclude = torch.zeros(2, 5, dtype=torch.bool)
    exclude[1, :4] = True  # row 1 has a single allowed item
    with pytest.raises(ValueError, match="row 1 has only 1 allowed"):
        AdaptiveSampler(2).sample(torch.randn(2, 5), exclude, 0.0)
    with pytest.raises(ValueError, match="progress"):
        AdaptiveSampler(1).sample(torch.randn(2, 5), torch.zeros(2, 5, dtype=torch.bool), 1.5)
