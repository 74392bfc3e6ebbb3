"""Bias mitigation by token editing: sampling with suppressed ids, its frequency-matched control, the binomial
intervals the measurement uses (coverage checked by simulation) and the edited datasets' ship-and-load."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cortex_run import generation as gen
from cortex_run import mitigation, tokenizers
from cortex_utils import bias_stats


@pytest.fixture
def tiny_tf(tiny_config, tiny_vq):
    cfg = gen.transformer_config(tiny_config, n_classes=3, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    tf = gen.build_transformer(cfg, vq=tiny_vq, seed=0)
    with torch.no_grad():  # a peaked, prefix-dependent distribution, so that a few ids dominate the samples
        for p in tf.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return tf


def _reference_sample(model, labels, temperature, top_k, seed):
    """The sampling loop as it was before ``suppress`` existed (no cache: the whole prefix every step)."""
    gpt = model.transformer
    x = torch.as_tensor(labels).long()[:, None]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(64):
            logits = gpt(x)[0][:, -1, :] / temperature
            if top_k:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            x = torch.cat([x, gen.draw(F.softmax(logits.double(), -1), g)], 1)
    return x[:, 1:].reshape(-1, 8, 8)


@pytest.mark.parametrize("top_k", [None, 5])
def test_no_suppression_gives_exactly_the_samples_of_before(tiny_tf, top_k, one_thread):
    labels = [0, 1, 2, 0, 1]
    plain = gen.sample_tokens(tiny_tf, labels, top_k=top_k, seed=4, progress=False)
    assert torch.equal(
        gen.sample_tokens(tiny_tf, labels, top_k=top_k, seed=4, progress=False, suppress=None), plain
    )
    assert torch.equal(plain, _reference_sample(tiny_tf, labels, 1.0, top_k, 4))


@pytest.mark.parametrize("top_k", [None, 3])
def test_suppressed_ids_never_appear(tiny_tf, top_k, one_thread):
    labels = np.repeat([0, 1, 2], 20)
    plain = gen.sample_tokens(tiny_tf, labels, top_k=top_k, seed=0, progress=False)
    common = (
        torch.bincount(plain.ravel(), minlength=32).argsort(descending=True)[:4].numpy()
    )  # the most drawn
    edited = gen.sample_tokens(tiny_tf, labels, top_k=top_k, seed=0, progress=False, suppress=common)
    assert not np.isin(edited.numpy(), common).any()
    assert np.isin(plain.numpy(), common).mean() > 0.2  # the test suppresses ids that matter
    assert edited.min() >= 0 and edited.max() < 32


def test_bad_suppression_sets_are_refused(tiny_tf):
    for bad, match in (
        ([], "empty set"),
        ([3, 32], r"id\(s\) \[32\] outside the codebook \[0, 32\)"),
        ([-1], r"id\(s\) \[-1\] outside"),
        ([1.5], "must be integers"),
        (np.arange(32), "nothing left to sample"),
    ):
        with pytest.raises(ValueError, match=match):
            gen.sample_tokens(tiny_tf, [0], progress=False, suppress=bad)


def test_control_ids_are_frequency_matched_seeded_and_exclusive():
    # id i occurs 2**i times (i = 1..9), id 0 never
    tokens = np.concatenate([np.full(2**i, i) for i in range(1, 10)])
    ctrl = mitigation.control_ids(tokens, [5, 8], exclude=[7], seed=0, pool=2)
    assert len(ctrl) == 2 and not set(ctrl) & {5, 7, 8, 0}
    # 8 first: 9 or 6 (the two nearest counts left); then 5: 4 or 6, or 3 when 6 is taken
    assert set(ctrl) <= {3, 4, 6, 9} and len(set(ctrl) & {6, 9}) >= 1
    assert np.array_equal(ctrl, mitigation.control_ids(tokens, [5, 8], exclude=[7], seed=0, pool=2))
    assert np.array_equal(mitigation.control_ids(tokens, [5], pool=1), [4])  # ties go to the smaller id
    with pytest.raises(ValueError, match="only 1 other ids occur"):
        mitigation.control_ids(tokens, [1, 2], exclude=[3, 4, 5, 6, 7, 8])
    with pytest.raises(ValueError, match="no attribute ids"):
        mitigation.control_ids(tokens, [])


def test_token_share():
    assert mitigation.token_share(np.array([[1, 2], [2, 3]]), [2]) == 0.5


def reference_interval(successes, n, level=0.95):
    """The former hand-written Wilson score interval: ``(share, low, high)``."""
    from statistics import NormalDist

    k, z = int(successes), NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k == 0 else min(p, max(0.0, centre - half))
    high = 1.0 if k == n else max(p, min(1.0, centre + half))
    return p, float(low), float(high)


def counted(k, n, level=0.95):
    """``share_interval`` of ``k`` successes in ``n``."""
    return bias_stats.share_interval(np.arange(n) < k, level)


def _coverage(n, p, reps, rng, interval):
    k = rng.binomial(n, p, reps)
    hit = {}
    for x in np.unique(k):  # one interval per count
        _, lo, hi = interval(int(x), n)
        hit[x] = lo <= p <= hi
    return np.mean([hit[x] for x in k])


def test_share_interval_by_hand_and_its_coverage_by_simulation():
    # by hand: 8 of 10, z = 1.96: centre (0.8 + 1.9208/10) / 1.38416, half 1.96/1.38416 * sqrt(0.016 +
    # 0.00960)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * np.sqrt(0.8 * 0.2 / 10 + z * z / 400)
    assert counted(8, 10) == pytest.approx((0.8, centre - half, centre + half))
    for n in range(1, 40):  # the ends are exact, and the share lies inside (no rounding past it)
        assert counted(0, n)[:2] == (0, 0) and counted(n, n)[::2] == (1, 1)
        assert all(lo <= p <= hi for p, lo, hi in (counted(k, n) for k in range(n + 1)))
    for level in (0.8, 0.95, 0.99):  # scipy's Wilson interval is the former one
        for n in (1, 2, 7, 30, 101):
            for k in range(n + 1):
                assert counted(k, n, level) == pytest.approx(reference_interval(k, n, level), abs=1e-14)
    rng = np.random.default_rng(0)
    cov = {(n, p): _coverage(n, p, 2000, rng, counted) for n in (10, 30, 300) for p in (0.05, 0.3, 0.5, 0.85)}
    assert min(cov.values()) >= 0.91 and np.mean(list(cov.values())) >= 0.935, cov

    def wald(k, n):  # the textbook interval, for contrast: the simulation can fail an interval
        p = k / n
        h = z * np.sqrt(p * (1 - p) / n)
        return p, p - h, p + h

    assert _coverage(10, 0.05, 2000, rng, wald) < 0.7


def test_difference_interval_coverage_by_simulation(monkeypatch):
    # scipy's binomtest takes ms: each share's interval is computed once per count (it depends on no more)
    once, share_interval = {}, bias_stats.share_interval

    def cached(outcomes, level=0.95):
        key = (int(np.sum(outcomes)), np.size(outcomes), level)
        return once[key] if key in once else once.setdefault(key, share_interval(outcomes, level))

    monkeypatch.setattr(bias_stats, "share_interval", cached)
    rng = np.random.default_rng(1)
    for n1, n2, p1, p2 in (
        (300, 300, 0.85, 0.6),
        (300, 300, 0.9, 0.9),
        (10, 10, 0.5, 0.2),
        (30, 300, 0.95, 0.7),
    ):
        hits = 0
        for i in range(1000):
            a, b = rng.random(n1) < p1, rng.random(n2) < p2
            d, lo, hi = bias_stats.difference_interval(a, b)
            hits += lo <= p1 - p2 <= hi
            if i < 20:  # Newcombe's hybrid score interval, by hand from the former Wilson intervals
                (q1, l1, u1), (q2, l2, u2) = (reference_interval(x.sum(), x.size) for x in (a, b))
                want = (q1 - q2, q1 - q2 - np.hypot(q1 - l1, u2 - q2), q1 - q2 + np.hypot(u1 - q1, q2 - l2))
                assert (d, lo, hi) == pytest.approx(want, abs=1e-14)
        assert hits / 1000 >= 0.925, (n1, n2, p1, p2, hits)


def test_intervals_refuse_bad_input():
    with pytest.raises(ValueError, match="not less than 1"):
        bias_stats.share_interval([])
    with pytest.raises(ValueError, match="level"):
        bias_stats.share_interval([True, False, False], level=1.0)


def _measured(share, kept, n, rng):
    """``n`` images of which exactly a share ``share`` show the value and ``kept`` keep the digit."""
    return pd.DataFrame(
        {
            "shows": rng.permutation(np.arange(n) < round(share * n)),
            "kept": rng.permutation(np.arange(n) < round(kept * n)),
        }
    )


def test_verdict_and_metrics():
    rng = np.random.default_rng(0)
    works = {
        "before": _measured(0.85, 0.95, 300, rng),
        "after": _measured(0.55, 0.94, 300, rng),
        "after_random": _measured(0.84, 0.95, 300, rng),
    }
    assert "**The edit works.**" in mitigation.verdict(works, "colour", "red")
    no_control = {**works, "after_random": _measured(0.55, 0.95, 300, rng)}
    line = mitigation.verdict(no_control, "colour", "red")
    assert "**not beyond the control**" in line and "does not work" in line
    broken = {**works, "after": _measured(0.5, 0.5, 300, rng)}
    assert "a drop beyond 0.10 is not ruled out" in mitigation.verdict(broken, "colour", "red")
    overshoot = {**works, "after": _measured(0.05, 0.95, 300, rng)}
    assert "**it did not fall toward balance**" in mitigation.verdict(overshoot, "colour", "red")
    assert "no lean toward red is established before" not in mitigation.verdict(works, "colour", "red")
    unbiased = {**works, "before": _measured(0.45, 0.95, 300, rng)}
    assert "no lean toward red is established before" in mitigation.verdict(unbiased, "colour", "red")
    table = mitigation.summary(works)
    m = mitigation.metrics(table, "colour")
    assert len(m) == 18 and m["mitigation_colour_share_before"] == 0.85
    assert (
        m["mitigation_colour_share_after_low"]
        < m["mitigation_colour_share_after"]
        < m["mitigation_colour_share_after_high"]
    )
    m = mitigation.metrics(table, "colour", works)  # with the differences the verdict reads
    assert len(m) == 27
    assert abs(m["mitigation_colour_change"] - (0.55 - 0.85)) < 1e-4
    assert m["mitigation_colour_change_vs_random_low"] < m["mitigation_colour_change_vs_random"] < 0
    assert all(v is None for v in mitigation.metrics(None, "colour", works).values())


class _AlwaysTwo(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), 2), 10).float()


def test_edited_generations_are_token_datasets_shipped_and_loaded(tmp_path, monkeypatch, one_thread):
    from conftest import tiny_vq_config

    from cortex_run.checkpoints import save_weights

    config = tiny_vq_config(n_embed=64)  # room for the planted world's 40 prompts
    tiny_vq = tokenizers.build_vq(config, seed=0)
    cfg = gen.transformer_config(config, n_classes=40, n_layer=2, n_head=2, n_embd=32)
    tf = gen.build_transformer(cfg, vq=tiny_vq, seed=0)
    path = save_weights(
        gen.transformer_state_for_saving(tf), tmp_path / "tf.safetensors", card={"kind": "test"}
    )
    monkeypatch.setattr(mitigation, "SHIPPED_DATA", tmp_path / "shipped")
    prior, sampling = {"red": {1: 0.9}}, {"temperature": 1.0, "top_k": 0, "guidance": 1.0}
    args = (tf, path, tiny_vq, "mitigation_colour", 1)
    ds, why = mitigation.load_or_sample_edited(*args, [4, 7], 12, prior, sampling, out_dir=tmp_path / "run1")
    assert why == f"sampled here (nothing at {tmp_path / 'shipped' / 'bias' / 'mitigation_colour'})"
    assert ds.tokens["neutral"].shape == (12, 8, 8) and not np.isin(ds.tokens["neutral"], [4, 7]).any()
    assert (tmp_path / "run1" / "data" / "mitigation_colour.json").exists()
    (tmp_path / "shipped" / "bias").mkdir(parents=True)  # ship it, as make checkpoints does
    import shutil

    shutil.copytree(ds.path, tmp_path / "shipped" / "bias" / "mitigation_colour")
    shutil.copy(tmp_path / "run1" / "data" / "mitigation_colour.json", tmp_path / "shipped" / "bias")
    again, why = mitigation.load_or_sample_edited(
        *args, [7, 4], 12, prior, sampling, out_dir=tmp_path / "run2"
    )
    assert why.startswith("loaded the shipped") and np.array_equal(
        again.tokens["neutral"], ds.tokens["neutral"]
    )
    _, why = mitigation.load_or_sample_edited(*args, [4], 12, prior, sampling, out_dir=tmp_path / "run3")
    assert "suppressed_ids [4, 7] (here [4])" in why
    with pytest.raises(ValueError, match="outside the codebook"):
        mitigation.load_or_sample_edited(*args, [64], 12, prior, sampling, out_dir=tmp_path / "run4")
    assert not (tmp_path / "run4").exists()
    m = mitigation.measure(tiny_vq, ds.tokens["neutral"], 2, "colour", "red", 2.4, {"judge": _AlwaysTwo()})
    assert list(m.columns) == ["shows", "judge_digit", "kept"] and m["kept"].all() and len(m) == 12
    with pytest.raises(ValueError, match="not a value of colour"):
        mitigation.measure(tiny_vq, ds.tokens["neutral"], 2, "colour", "thick", 2.4, {"j": _AlwaysTwo()})
