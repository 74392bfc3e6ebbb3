import numpy as np
import pytest
import torch
from torch import nn

from cortex_run import report
from cortex_utils import optimization as opt
from cortex_utils.iem import build_iem

K, D, GRID = 16, 8, (4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(seed=1):
    torch.manual_seed(seed)
    cb = torch.randn(K, D)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(D * 16, 3)).eval()
    conv = nn.Sequential(nn.Conv2d(D, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16, 3)).eval()
    tokens = torch.randint(0, K, GRID, generator=torch.Generator().manual_seed(seed))
    return cb, linear, conv, tokens


def test_region_mask_and_its_errors():
    m = opt.region_mask((16, 16), (7, 11), range(7, 11))
    assert m.dtype == bool and m.sum() == 16 and m[7:11, 7:11].all()
    assert np.array_equal(
        opt.region_mask((4, 4), slice(1, 3), (0, 4)), np.repeat([[0], [1], [1], [0]], 4, 1) > 0
    )
    with pytest.raises(ValueError, match=r"rows \[3, 5\) lies \(partly\) outside the grid's \[0, 4\)"):
        opt.region_mask((4, 4), (3, 5), (0, 2))
    with pytest.raises(ValueError, match=r"cols \[-1, 2\) lies"):
        opt.region_mask((4, 4), (0, 2), (-1, 2))
    with pytest.raises(ValueError, match=r"rows \[2, 2\) is empty"):
        opt.region_mask((4, 4), (2, 2), (0, 2))


def test_check_pair_and_input_errors():
    opt.check_pair(1, 2, 3)
    with pytest.raises(ValueError, match="same class"):
        opt.check_pair(2, 2, 3)
    with pytest.raises(ValueError, match=r"target class 3 is outside the IEM's classes \[0, 3\)"):
        opt.check_pair(0, 3, 3)
    cb, linear, _, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    with pytest.raises(ValueError, match=r"target class 5 is outside"):
        opt.optimize_tokens(
            linear, cb, tokens, region, options=opt.TokenSearch(steps=2, progress=False), target=5
        )
    with pytest.raises(ValueError, match="same class"):
        opt.optimize_embeddings(
            linear, cb, tokens, region, options=opt.Search(steps=2, progress=False), target=1, source=1
        )
    with pytest.raises(ValueError, match="region_mask must be bool"):
        opt.optimize_tokens(
            linear,
            cb,
            tokens,
            np.ones((3, 3), bool),
            options=opt.TokenSearch(steps=2, progress=False),
            target=1,
        )
    with pytest.raises(ValueError, match="empty"):
        opt.optimize_tokens(
            linear,
            cb,
            tokens,
            np.zeros(GRID, bool),
            options=opt.TokenSearch(steps=2, progress=False),
            target=1,
        )


class _NaNAfter(nn.Module):
    """A linear IEM that starts returning NaN on its ``n``-th call (call 0 is the check of the original)."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x):
        out = self.inner(x)
        self.calls += 1
        return out * float("nan") if self.calls > self.n else out


def test_nan_in_the_iem_output_names_the_step():
    cb, linear, _, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    with pytest.raises(FloatingPointError, match="at step 2"):
        opt.optimize_tokens(
            _NaNAfter(linear, 3),
            cb,
            tokens,
            region,
            options=opt.TokenSearch(steps=5, progress=False),
            target=1,
        )
    with pytest.raises(FloatingPointError, match="at step 1"):
        opt.optimize_embeddings(
            _NaNAfter(linear, 2), cb, tokens, region, options=opt.Search(steps=5, progress=False), target=1
        )


def test_token_optimization_finds_the_linear_optimum_and_keeps_the_outside():
    cb, linear, _, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    res = opt.optimize_tokens(
        linear,
        cb,
        tokens,
        region,
        options=opt.TokenSearch(steps=60, lr=0.5, seed=1, snapshot_every=20, progress=False),
        target=2,
    )
    # a linear IEM's best id per position is argmax_k w_pos . codebook_k
    w = linear[1].weight[2].detach().reshape(D, *GRID)
    best_ids = torch.einsum("dhw,kd->hwk", w, cb).argmax(-1)
    r = torch.from_numpy(region)
    assert res["tokens"].dtype == torch.int64 and res["tokens"].shape == GRID
    assert torch.equal(res["tokens"][r], best_ids[r])
    for grid in (res["tokens"], res["final_tokens"], *(g for _, g in res["snapshots"])):
        assert torch.equal(grid[~r], tokens[~r])
    assert res["best_logit"] > res["original_logit"] + 0.5
    hist = res["history"]
    assert list(hist.columns) == ["step", "target_logit"] and len(hist) == 60
    assert hist.target_logit.max() == pytest.approx(res["best_logit"])
    assert [s for s, _ in res["snapshots"]] == [0, 20, 40, 59]
    with torch.no_grad():  # the recorded best logit is that of the returned grid
        logit = linear(cb[res["tokens"]].permute(2, 0, 1)[None])[0, 2].item()
    assert logit == pytest.approx(res["best_logit"], abs=1e-5)
    again = opt.optimize_tokens(
        linear,
        cb,
        tokens,
        region,
        options=opt.TokenSearch(steps=60, lr=0.5, seed=1, progress=False),
        target=2,
    )
    assert again["history"].equals(hist)  # seeded


def test_token_optimization_increases_a_nonlinear_iem_logit():
    cb, _, conv, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (0, 3))
    res = opt.optimize_tokens(
        conv,
        cb,
        tokens,
        region,
        options=opt.TokenSearch(steps=60, lr=0.5, seed=1, progress=False),
        target=0,
        source=1,
    )
    logits = res["history"].target_logit.to_numpy()
    assert res["best_logit"] > res["original_logit"]
    assert logits[-10:].mean() > logits[:10].mean()  # it learns, not only random search
    r = torch.from_numpy(region)
    assert torch.equal(res["tokens"][~r], tokens[~r])


def test_tokens_outside_the_region_never_change_with_a_real_iem_and_small_init_logit():
    cb, _, _, tokens = _setup()
    iem = build_iem("resnet_se", D, GRID, 3, width=4)
    region = opt.region_mask(GRID, (0, 2), (2, 4))
    res = opt.optimize_tokens(
        iem,
        cb,
        tokens,
        region,
        options=opt.TokenSearch(steps=15, lr=0.5, init_logit=0.1, snapshot_every=1, progress=False),
        target=1,
    )
    r = torch.from_numpy(region)
    assert all(torch.equal(g[~r], tokens[~r]) for _, g in res["snapshots"])
    assert any(not torch.equal(g[r], tokens[r]) for _, g in res["snapshots"])  # the region does change


def test_snap_to_codebook_matches_brute_force():
    torch.manual_seed(0)
    cb = torch.randn(50, 6)
    e = torch.randn(3, 6, 4, 5)
    brute = ((e.permute(0, 2, 3, 1)[..., None, :] - cb) ** 2).sum(-1).argmin(-1)
    assert torch.equal(opt.snap_to_codebook(e, cb, chunk=7), brute)
    assert torch.equal(opt.snap_to_codebook(e[1], cb), brute[1])
    assert torch.equal(
        opt.snap_to_codebook(cb[brute[0]].permute(2, 0, 1), cb), brute[0]
    )  # codebook rows snap to themselves
    with pytest.raises(ValueError, match="embeddings must be"):
        opt.snap_to_codebook(torch.randn(2, 5, 4, 4), cb)


def test_embedding_optimization_increases_the_logit_and_keeps_the_outside():
    cb, linear, conv, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    r = torch.from_numpy(region)
    for iem in (linear, conv):
        res = opt.optimize_embeddings(
            iem,
            cb,
            tokens,
            region,
            options=opt.Search(steps=30, lr=0.1, snapshot_every=10, progress=False),
            target=2,
        )
        emb0 = cb[tokens].permute(2, 0, 1)[None]
        assert res["embeddings"].shape == (1, D, *GRID)
        assert torch.equal(res["embeddings"][..., ~r], emb0[..., ~r])
        assert not torch.equal(res["embeddings"][..., r], emb0[..., r])
        assert res["final_logit"] > res["original_logit"] + 0.5
        assert torch.equal(res["tokens"][~r], tokens[~r])
        snapped = opt.snap_to_codebook(res["embeddings"][0], cb)
        assert torch.equal(res["tokens"][r], snapped[r])
        hist = res["history"]
        assert len(hist) == 30 and hist.snapped_logit.notna().sum() == 4 and len(res["snapshots"]) == 4
        if iem is linear:  # constant gradient: every Adam step raises the logit
            assert np.all(np.diff(hist.target_logit.to_numpy()) > 0)


def test_check_outside_unchanged_raises_only_for_changes_outside_the_region():
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    before = torch.arange(16).reshape(GRID)
    inside = before.clone()
    inside[1, 2] = 15  # inside the region: allowed
    opt.check_outside_unchanged(before, inside, region)
    opt.check_outside_unchanged(
        np.stack([before.numpy()] * 2), np.stack([inside.numpy(), before.numpy()]), region
    )
    outside = inside.clone()
    outside[0, 0], outside[3, 3] = 5, 5  # two positions outside
    with pytest.raises(AssertionError, match=r"2 token\(s\) changed outside"):
        opt.check_outside_unchanged(before, outside, region)
    with pytest.raises(AssertionError, match=r"2 token\(s\) changed outside"):
        opt.check_outside_unchanged(torch.stack([before, before]), torch.stack([inside, outside]), region)
    with pytest.raises(ValueError, match="must match"):
        opt.check_outside_unchanged(before, before[:3], region)


# --- saliency vs optimisation -----------------------------------------------------------------------


def test_fill_region_and_new_region_ids():
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    grids = np.arange(32).reshape(2, 4, 4) % K
    fill = np.full(GRID, -1)
    fill[region] = [7, 7, 8, 9]
    out = opt.fill_region(grids, region, fill)
    assert out.shape == grids.shape and np.array_equal(out[:, ~region], grids[:, ~region])
    assert out[0][region].tolist() == [7, 7, 8, 9] and out[1][region].tolist() == [7, 7, 8, 9]
    per = np.stack([np.where(region, 1, -1), np.where(region, 2, -1)])
    assert opt.fill_region(grids, region, per)[1][region].tolist() == [2] * 4
    with pytest.raises(ValueError, match="negative id inside the region"):
        opt.fill_region(grids, region, np.full(GRID, -1))
    with pytest.raises(ValueError, match="must share the grid"):
        opt.fill_region(grids, region, np.zeros((3, 3), int))
    # only the region's changed positions count as put there by the optimiser
    after = grids.copy()
    after[0, 1, 1], after[0, 0, 0] = 15, 15  # (0, 0) is outside the region: not counted (and not allowed)
    after[1, 2, 2] = grids[1, 2, 2]  # unchanged
    after[1, 1, 2] = 3
    ids = opt.new_region_ids(grids, after, region)
    assert [i.tolist() for i in ids] == [[15], [3]]


def test_concept_share_counts_distinct_ids():
    assert opt.concept_share([4, 4, 4, 5], [4]) == 0.5  # {4, 5}: one of two distinct ids
    assert opt.concept_share([1, 2], [3]) == 0.0
    assert np.isnan(opt.concept_share([], [3]))


def test_the_chance_level_holds_where_the_ids_are_random():
    """The truth known: ids drawn from the codebook's usage (the null) sit at chance, and the p-value's
    false-positive rate at 0.05 stays near 0.05; ids drawn mostly from the concept set are found."""
    rng = np.random.default_rng(0)
    usage = rng.pareto(1.0, 64) + 0.01  # skewed, as real codebook usage
    concept = np.argsort(-usage)[[1, 4, 9, 20, 40]]  # a frequent, some middling and a rare id
    sizes = [16, 16, 12, 16, 5, 16]
    observed, chance, p_null, p_planted = [], [], [], []
    for study in range(300):
        ids = opt.random_ids_like([np.zeros(n) for n in sizes], usage, seed=study)
        assert [len(i) for i in ids] == sizes
        r = opt.overlap_vs_chance(ids, concept, usage, n_draws=400, seed=10_000 + study)
        observed.append(r["overlap"])
        chance.append(r["chance"])
        p_null.append(r["p_value"])
        planted = [
            np.where(rng.random(n) < 0.5, rng.choice(concept, n), i) for n, i in zip(sizes, ids, strict=True)
        ]
        p_planted.append(opt.overlap_vs_chance(planted, concept, usage, n_draws=400, seed=study)["p_value"])
    assert abs(np.mean(observed) - np.mean(chance)) < 0.01  # the random-id control sits at chance
    fpr = np.mean(np.array(p_null) < 0.05)
    assert 0.02 <= fpr <= 0.08, fpr
    assert np.mean(np.array(p_planted) < 0.05) > 0.9
    # chance depends on the usage: concept ids that are never used cannot be drawn
    never = np.zeros(64)
    never[:10] = 1
    assert opt.overlap_vs_chance([np.arange(10, 14)], [10, 11], never, n_draws=50)["chance"] == 0.0
    empty = opt.overlap_vs_chance([np.zeros(0)], concept, usage)
    assert empty["grids"] == 0 and np.isnan(empty["overlap"])
    with pytest.raises(ValueError, match="usage must be"):
        opt.overlap_null([3], concept, np.zeros(64))


def resampled_by_hand(d, n_boot=2000, level=0.95, seed=0):
    """The former hand-written percentile bootstrap of the mean of ``d``: ``(mean, low, high)``."""
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def test_mean_difference_interval():
    mean, lo, hi = opt.mean_difference_interval([0.9, 0.8, 0.7], [0.1, 0.1, 0.1])
    assert mean == pytest.approx(0.7) and 0.6 - 1e-9 <= lo <= mean <= hi <= 0.8 + 1e-9
    assert opt.mean_difference_interval([0.5, 0.5], [0.5, 0.5]) == (0.0, 0.0, 0.0)
    assert opt.mean_difference_interval([0.75], [0.5]) == (0.25, 0.25, 0.25)  # one unit: no spread
    rng = np.random.default_rng(0)
    for n, seed in ((2, 0), (7, 1), (120, 5)):  # scipy draws the units the former loop drew
        a, b = rng.random(n), rng.random(n)
        got = opt.mean_difference_interval(a, b, n_boot=500, level=0.9, seed=seed)
        assert got == pytest.approx(resampled_by_hand(a - b, 500, 0.9, seed), abs=1e-12)
    with pytest.raises(ValueError, match="paired values"):
        opt.mean_difference_interval([0.5, np.nan], [0.5, 0.5])
    with pytest.raises(ValueError, match="paired values"):
        opt.mean_difference_interval([0.5, 0.4, 0.3], [0.5])


def test_views_verdict_words_follow_the_numbers():
    base = {
        "overlap": 0.4,
        "chance": 0.1,
        "p_value": 0.001,
        "overlap_random": 0.11,
        "before": 0.02,
        "optimised": 0.85,
        "concept_fill": 0.30,
        "random_fill": 0.05,
        "opt_minus_fill": (0.55, 0.3, 0.8),
        "fill_minus_random": (0.25, 0.1, 0.4),
    }
    text = report.views_verdict(base)
    assert "40% are the target's concept tokens" in text and "more than chance" in text
    assert "more than the concept fill" in text and "above random ids" in text
    assert "the optimisation tells more: it finds" in text and "agree beyond chance" in text
    flipped = report.views_verdict({**base, "p_value": 0.4, "opt_minus_fill": (-0.2, -0.4, -0.05)})
    assert "not more than chance" in flipped and "less than the concept fill" in flipped
    assert "saliency's tokens tell more" in flipped and "On which ids, the optimisation tells more" in flipped
    tie = report.views_verdict(
        {**base, "opt_minus_fill": (0.05, -0.1, 0.2), "fill_minus_random": (0.0, -0.1, 0.1)}
    )
    assert "not distinguishable from) the concept fill" in tie and "not distinguishable from random" in tie
    assert "Neither view makes the target appear" in tie
    same = report.views_verdict({**base, "opt_minus_fill": (0.05, -0.1, 0.2)})
    assert "saliency's tokens tell as much" in same
    other = {**base, "overlap_other": 0.2, "other_chance": 0.1, "target_minus_other": (0.2, 0.1, 0.3)}
    assert (
        "more common among them than the other classes' (20% on average, chance 10%"
        in report.views_verdict(other)
    )
    assert "not distinguishably more common" in report.views_verdict(
        {**other, "target_minus_other": (0.1, -0.1, 0.3)}
    )
    freq = {**base, "frequency_fill": 0.1, "fill_minus_frequency": (0.2, 0.1, 0.3)}
    assert "Saliency's choice of ids matters" in report.views_verdict(freq)
    assert "do about as well" in report.views_verdict({**freq, "fill_minus_frequency": (0.0, -0.1, 0.1)})
    assert "do better" in report.views_verdict({**freq, "fill_minus_frequency": (-0.2, -0.3, -0.1)})
    per = report.views_verdict(
        {**base, "per_method": {"tokens": (0.17, 0.1, 0.015), "embeddings": (0.06, 0.1, 0.9)}}
    )
    assert "(per method: tokens 17%, chance 10%, p = 0.015; embeddings 6%, chance 10%, p = 0.900)" in per


def test_overlap_takes_one_concept_set_per_grid_and_streams_per_grid():
    usage = np.ones(20)
    ids = [np.array([1, 2]), np.array([3, 4, 5, 6])]
    r = opt.overlap_vs_chance(ids, [[1, 9], [3, 4]], usage, n_draws=500)
    assert r["overlap"] == pytest.approx((0.5 + 0.5) / 2) and r["grids"] == 2
    assert r["chance"] == pytest.approx(0.1, abs=0.02)  # 2 of 20 equally used ids
    with pytest.raises(ValueError, match="2 concept id sets for 3 grids"):
        opt.overlap_vs_chance([*ids, ids[0]], [[1], [2]], usage)
    # grid 1's draws do not depend on grid 0's size
    a = opt.random_ids_like([np.zeros(3), np.zeros(5)], usage, seed=4)
    b = opt.random_ids_like([np.zeros(7), np.zeros(5)], usage, seed=4)
    assert np.array_equal(a[1], b[1]) and len(a[0]) == 3 and len(b[0]) == 7


def test_embedding_mode_refuses_token_mode_settings():
    cb, linear, _, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    with pytest.raises(TypeError, match="token mode's"):
        opt.optimize_embeddings(linear, cb, tokens, region, target=1, options=opt.TokenSearch(steps=2))
    with pytest.raises(TypeError, match="unexpected keyword"):
        opt.Search(tau=0.5)
