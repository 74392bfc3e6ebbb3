import numpy as np
import pandas as pd
import pytest
import torch

from cortex_run import report
from cortex_utils import iem as iemlib
from cortex_utils import sanity as S
from cortex_utils import tis as tislib
from cortex_utils.evaluation import SPACES, Masking
from cortex_utils.tis import Noise

D, GRID, C = 4, (4, 4), 3


@pytest.fixture
def tiny_iem(one_thread):
    torch.manual_seed(0)
    model = iemlib.build_iem("vgg", D, GRID, C, width=4).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so randomization visibly changes them
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 0.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def close(a, b, rel=1e-4):
    """Equal up to ``rel`` of the larger map's scale (an untrained deep IEM has tiny gradients)."""
    return bool((a - b).abs().max() <= rel * max(a.abs().max(), b.abs().max()))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, D, *GRID, generator=g), torch.tensor([0, 1, 2, 1, 0])


def test_every_method_gives_one_finite_score_per_position(tiny_iem, batch):
    x, y = batch
    for method in tislib.METHODS:
        s = tislib.attribute(tiny_iem, x, y, method, **tislib.method_options(method, Noise(3), steps=4))
        assert s.shape == (5, *GRID), method
        assert torch.isfinite(s).all(), method
        assert s.abs().sum() > 0, method


def test_unknown_method_and_bad_input_are_refused(tiny_iem, batch):
    x, y = batch
    with pytest.raises(ValueError, match="choose one of.*smoothgrad.*occlusion"):
        tislib.attribute(tiny_iem, x, y, "lime")
    with pytest.raises(ValueError, match="reduction"):
        tislib.attribute(tiny_iem, x, y, "gradient", reduction="median")
    with pytest.raises(ValueError, match="targets"):
        tislib.attribute(tiny_iem, x, y[:3], "gradient")
    with pytest.raises(ValueError, match="expects embeddings"):
        tislib.attribute(tiny_iem, x[:, :2], y, "gradient")
    tiny_iem.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        tislib.attribute(tiny_iem, x, y, "gradient")


def test_ig_baseline_of_the_wrong_shape_is_refused(tiny_iem, batch):
    x, y = batch
    for bad in (torch.zeros(D + 1), torch.zeros(D, 3, 4), torch.zeros(2, D, *GRID), torch.zeros(5, D)):
        with pytest.raises(ValueError, match="baseline must have shape"):
            tislib.attribute(tiny_iem, x, y, "integrated_gradients", baseline=bad, steps=4)
    # one embedding at every position == the full grid of it
    e = torch.randn(D)
    a = tislib.attribute(tiny_iem, x, y, "integrated_gradients", baseline=e, steps=4)
    b = tislib.attribute(
        tiny_iem, x, y, "integrated_gradients", baseline=e[:, None, None].expand(D, *GRID), steps=4
    )
    assert close(a, b)


@pytest.mark.parametrize("chunk", [7, 3])
def test_smoothgrad_equals_captums_noise_tunnel_given_its_noise(tiny_iem, batch, chunk):
    """Captum's NoiseTunnel(Saliency) draws the noise of its passes of nt_samples_batch_size copies per image
    image by image; Noise(..., chunk=k) draws the same normals from a generator seeded as Captum's
    global one, so the project's one SmoothGrad gives Captum's maps (here S = 7 copies: in one pass, and in
    passes of 3, 3 and 1)."""
    from captum.attr import NoiseTunnel, Saliency

    x, y = batch
    S, seed = 7, 11
    ours = tislib.attribute(tiny_iem, x, y, "smoothgrad", "mean", noise=Noise(S, 0.2, chunk=chunk), seed=seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grad = NoiseTunnel(Saliency(tiny_iem)).attribute(
            x.clone().requires_grad_(),
            nt_type="smoothgrad",
            nt_samples=S,
            nt_samples_batch_size=chunk,
            stdevs=float(0.2 * (x.max() - x.min())),
            target=y,
            abs=False,
        )
    assert close(ours, tislib.reduce_channels(grad, "mean")), (ours - grad.mean(1)).abs().max()
    # and not by accident: other noise gives other scores; the seed reproduces them
    other = tislib.attribute(tiny_iem, x, y, "smoothgrad", "mean", noise=Noise(S, chunk=chunk), seed=seed + 1)
    assert not close(ours, other, rel=1e-2)
    assert torch.equal(
        ours, tislib.attribute(tiny_iem, x, y, "smoothgrad", "mean", noise=Noise(S, chunk=chunk), seed=seed)
    )


def test_noise_in_chunks_is_a_reordering_of_captums_draws(batch):
    x, _ = batch
    g = torch.Generator().manual_seed(0)
    chunked = Noise(5, 0.2, chunk=2).draw(x, torch.Generator().manual_seed(0))
    sigma = 0.2 * (x.max() - x.min())
    first, second, last = (torch.randn(len(x) * k, *x.shape[1:], generator=g) * sigma for k in (2, 2, 1))
    assert torch.equal(chunked[:2], first.reshape(len(x), 2, *x.shape[1:]).transpose(0, 1))
    assert torch.equal(chunked[2:4], second.reshape(len(x), 2, *x.shape[1:]).transpose(0, 1))
    assert torch.equal(chunked[4], last)
    for bad in ({"chunk": 0}, {"chunk": 2, "draws": "antithetic"}):
        with pytest.raises(ValueError, match="chunk orders Gaussian draws"):
            Noise(4, **bad)


def test_attribute_tokens_draws_smoothgrads_noise_as_captum_did(tiny_iem, monkeypatch):
    """Batch b's noise: seed + b, CAPTUM_ROWS // len(batch) draws per image at a time (notebook 11's maps)."""
    rng = np.random.default_rng(0)
    codebook = torch.randn(10, D)
    tokens, y = rng.integers(0, 10, (7, *GRID)), rng.integers(0, C, 7)
    monkeypatch.setattr(tislib, "CAPTUM_ROWS", 8)  # Captum's passes of 8 rows (1024 in notebook 11)
    got = tislib.attribute_tokens(tiny_iem, codebook, tokens, y, noise=Noise(6), seed=3, batch_size=4)
    x = codebook[torch.from_numpy(tokens)].permute(0, 3, 1, 2).contiguous()
    want = [
        tislib.attribute(tiny_iem, x[:4], y[:4], noise=Noise(6, chunk=2), seed=3),  # 8 // 4 copies at a time
        tislib.attribute(tiny_iem, x[4:], y[4:], noise=Noise(6, chunk=2), seed=4),
    ]  # 8 // 3
    np.testing.assert_array_equal(got, torch.cat(want).numpy())


def test_smoothgrad_without_noise_is_the_gradient(tiny_iem, batch):
    x, y = batch
    a = tislib.attribute(tiny_iem, x, y, "smoothgrad", noise=Noise(3, spread=0.0))
    assert close(a, tislib.attribute(tiny_iem, x, y, "gradient"))


def test_integrated_gradients_is_complete(tiny_iem, batch):
    """IG's attributions sum to f(x) - f(baseline) (mean over channels * D * positions = the full sum)."""
    x, y = batch
    base = torch.randn(D)
    s = tislib.attribute(tiny_iem, x, y, "integrated_gradients", baseline=base, steps=64, reduction="mean")
    with torch.no_grad():
        fx = tiny_iem(x).gather(1, y[:, None])[:, 0]
        fb = tiny_iem(base[None, :, None, None].expand_as(x).contiguous()).gather(1, y[:, None])[:, 0]
    assert close(s.sum((1, 2)) * D, fx - fb, rel=5e-2)  # the path integral, discretized in 64 steps


def test_occlusion_is_the_logit_drop_of_replacing_a_position(tiny_iem, batch):
    x, y = batch
    base = torch.randn(D)
    s = tislib.attribute(tiny_iem, x, y, "occlusion", baseline=base)
    with torch.no_grad():
        fx = tiny_iem(x).gather(1, y[:, None])[:, 0]
        for r, c in [(0, 0), (2, 3)]:
            xm = x.clone()
            xm[:, :, r, c] = base[None, :]
            drop = fx - tiny_iem(xm).gather(1, y[:, None])[:, 0]
            assert close(s[:, r, c], drop)
    blocks = tislib.attribute(tiny_iem, x, y, "occlusion", baseline=base, group=2)
    assert torch.equal(blocks[:, 0, 0], blocks[:, 1, 1]) and torch.equal(blocks[:, 2, 2], blocks[:, 3, 3])
    assert not close(blocks[:, 0, 0], blocks[:, 2, 2], rel=1e-2)
    assert tislib.position_groups(GRID, 2).unique().numel() == 4
    with pytest.raises(ValueError, match="group size"):
        tislib.position_groups(GRID, 0)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def test_cascade_randomizes_from_the_head_down(tiny_iem):
    before = _weights(tiny_iem)
    steps = S.cascade_steps(tiny_iem)
    head = [n for n, m in tiny_iem.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    first_conv = [n for n, m in tiny_iem.named_modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert steps[0] == [head]
    assert steps[-1][-1] == first_conv
    cascade = S.randomize_cascade(tiny_iem, seed=0)
    assert len(cascade) == len(steps)
    changed = []
    for _, model in cascade:
        w = _weights(model)
        changed.append({k for k in w if not torch.equal(w[k], before[k])})
        assert not model.training
    assert f"{head}.weight" in changed[0] and f"{first_conv}.weight" not in changed[0]
    assert all(a < b for a, b in zip(changed, changed[1:], strict=False))  # strictly growing
    assert f"{first_conv}.weight" in changed[-1]
    assert all(torch.equal(v, before[k]) for k, v in _weights(tiny_iem).items())  # the original is untouched


def test_full_randomization_changes_every_layer(tiny_iem):
    before = _weights(tiny_iem)
    rand = _weights(S.randomize_full(tiny_iem, seed=3))
    weights = [k for k in before if k.endswith("weight")]
    assert all(not torch.equal(rand[k], before[k]) for k in weights)
    assert all(torch.equal(v, before[k]) for k, v in _weights(tiny_iem).items())
    with pytest.raises(ValueError, match="no module"):
        S.randomize(tiny_iem, ["nope"])


def test_cascade_of_a_vit_covers_its_own_parameters(one_thread):
    model = iemlib.build_iem("vit", D, GRID, C, width=8).eval()
    names = [n for step in S.cascade_steps(model) for n in step]
    assert "" in names  # the class token and position table live on the root module
    pos = model.pos.detach().clone()
    assert not torch.equal(S.randomize_full(model).pos, pos)


def test_spearman():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 4, 4))
    assert np.allclose(S.spearman(a, a), 1.0)
    assert np.allclose(S.spearman(a, np.exp(3 * a)), 1.0)  # ranks only
    assert np.allclose(S.spearman(a, -a), -1.0)
    b = rng.normal(size=(6, 4, 4))
    r = S.spearman(a, b)
    assert np.all(np.abs(r) < 1)
    const = S.spearman(a[:1], np.zeros((1, 4, 4)))
    assert np.isnan(const).all()
    with pytest.raises(ValueError, match="aligned"):
        S.spearman(a, b[:3])


def test_deletion_auc_is_lower_for_the_model_aligned_order():
    """A toy 'model' whose score is the share of position weight left unmasked: deleting the heaviest
    positions first must fall faster (lower AUC) than deleting them last; insertion the other way round."""
    rng = np.random.default_rng(0)
    weight = rng.random((8, *GRID)) ** 3

    def score(mask):
        return (weight * ~mask).reshape(8, -1).sum(1) / weight.reshape(8, -1).sum(1)

    aligned, reverse = tislib.topk_positions(weight, None), tislib.topk_positions(-weight, None)
    f, dele = S.removal_curve(aligned, GRID, score, steps=16, curve="deletion")
    _, dele_rev = S.removal_curve(reverse, GRID, score, steps=16, curve="deletion")
    assert f[0] == 0 and f[-1] == 1 and len(f) == 17
    assert np.allclose(dele[0], 1) and np.allclose(dele[-1], 0)
    assert (np.trapezoid(dele, f, axis=0) < np.trapezoid(dele_rev, f, axis=0)).all()
    _, ins = S.removal_curve(aligned, GRID, score, steps=16, curve="insertion")
    _, ins_rev = S.removal_curve(reverse, GRID, score, steps=16, curve="insertion")
    assert np.allclose(ins[0], 0) and np.allclose(ins[-1], 1)
    assert (np.trapezoid(ins, f, axis=0) > np.trapezoid(ins_rev, f, axis=0)).all()
    one = {"space": "token", "curve": "deletion", "method": "m", "evaluator": "e"}
    table = pd.DataFrame({**one, "fraction": [1, 0, 0.5], "mean_prob": np.float32([0, 1, 1])})
    assert S.curve_auc(table)["auc"].tolist() == [0.75, 0.75]  # the trapezoid rule; the mean over evaluators
    with pytest.raises(ValueError, match="curve"):
        S.removal_curve(aligned, GRID, score, curve="both")
    with pytest.raises(ValueError, match="steps"):
        S.removal_curve(aligned, GRID, score, steps=17)
    with pytest.raises(ValueError, match="rank all"):
        S.removal_curve(aligned[:, :5], GRID, score)


class _Judge(torch.nn.Module):
    """Images -> logits: class 0 likes bright pixels."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([4 * m, torch.zeros_like(m), -4 * m], 1)


def test_faithfulness_curves_in_both_spaces(tiny_vq, one_thread):
    from cortex_utils import vq as vqlib

    h, w = vqlib.grid_shape(tiny_vq)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 32, (3, h, w))
    labels = np.zeros(3, dtype=np.int64)
    scores = {"a": rng.normal(size=tokens.shape), "b": rng.normal(size=tokens.shape)}
    table = S.faithfulness_curves(
        tiny_vq,
        tokens,
        labels,
        scores,
        {"judge": _Judge()},
        options=Masking(SPACES, neutral=0, progress=False),
        steps=4,
    )
    assert set(table.method) == {"a", "b", "random"} and set(table.space) == {"pixel", "token"}
    assert set(table.curve) == set(S.CURVES)
    assert table.mean_prob.between(0, 1).all()
    # nothing masked (deletion k = 0, insertion k = all) is the same image whatever the order
    start = table[(table.curve == "deletion") & (table.k == 0)].groupby("space").mean_prob.nunique()
    assert (start == 1).all()
    auc = S.curve_auc(table)
    assert len(auc) == 2 * 2 * 3 * 2  # spaces x curves x methods x (judge + mean)
    with pytest.raises(ValueError, match="reference order"):
        S.faithfulness_curves(
            tiny_vq,
            tokens,
            labels,
            {"random": scores["a"]},
            {"judge": _Judge()},
            options=Masking(progress=False),
        )
    with pytest.raises(ValueError, match="aligned"):
        S.faithfulness_curves(
            tiny_vq,
            tokens,
            labels,
            {"a": scores["a"][:2]},
            {"judge": _Judge()},
            options=Masking(progress=False),
        )
    with pytest.raises(ValueError, match="curve"):
        S.faithfulness_curves(
            tiny_vq,
            tokens,
            labels,
            scores,
            {"judge": _Judge()},
            options=Masking(progress=False),
            curves=["sideways"],
        )


def test_attribute_tokens_batches_like_one_call(tiny_iem):
    rng = np.random.default_rng(0)
    codebook = torch.randn(10, D)
    tokens = rng.integers(0, 10, (7, *GRID))
    y = rng.integers(0, C, 7)
    whole = tislib.attribute_tokens(tiny_iem, codebook, tokens, y, "gradient", batch_size=100)
    parts = tislib.attribute_tokens(tiny_iem, codebook, tokens, y, "gradient", batch_size=3)
    assert whole.shape == (7, *GRID) and whole.dtype == np.float32
    assert close(torch.from_numpy(whole), torch.from_numpy(parts))


def test_abs_spearman_sees_magnitudes_through_random_signs():
    """A randomized model that keeps where the scores are large but flips their signs at random: the signed
    correlation is near 0, the absolute one high (what notebook 11 found for occlusion)."""
    rng = np.random.default_rng(0)
    magnitude = rng.random((50, 8, 8)) ** 2
    trained = magnitude * rng.choice([-1, 1], size=magnitude.shape)
    flipped = magnitude * rng.choice([-1, 1], size=magnitude.shape)
    assert abs(np.nanmean(S.spearman(trained, flipped))) < 0.1
    assert np.nanmean(S.abs_spearman(trained, flipped)) > 0.95
    assert np.allclose(S.abs_spearman(trained, trained), 1.0)
    with pytest.raises(ValueError, match="aligned"):
        S.abs_spearman(trained, flipped[:3])


def test_topk_agreement_of_absolute_scores():
    a = np.arange(16, dtype=float).reshape(1, 4, 4)  # top-3: positions 15, 14, 13
    assert tislib.topk_agreement(a, a, 3, absolute=True) == [1.0]
    b = a.copy()
    b[0, 3, 3] = -100  # position 15 is now the least by sign but the largest by magnitude
    assert tislib.topk_agreement(a, b, 3, absolute=True) == [1.0]
    assert np.isclose(tislib.topk_agreement(a, b, 3)[0], 2 / 3)
    assert tislib.topk_agreement(a, -a, 3) == [0.0]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 8, 8)), rng.normal(size=(2000, 8, 8))
    assert abs(tislib.topk_agreement(x, y, 5, absolute=True).mean() - 5 / 64) < 0.01  # chance: k / n
    with pytest.raises(ValueError, match="k must lie"):
        tislib.topk_agreement(a, a, 17, absolute=True)


def test_random_control_passes_randomization_and_is_reproducible():
    first = S.random_attribution((200, 8, 8), seed=0)
    assert first.shape == (200, 8, 8) and first.dtype == np.float32
    assert first.min() >= -1 and first.max() < 1
    assert np.array_equal(first, S.random_attribution((200, 8, 8), seed=0))
    again = S.random_attribution((200, 8, 8), seed=1)  # a fresh draw for another model
    sim = S.map_similarity(first, again, k=5)
    assert list(sim.columns) == ["image", "spearman", "abs_spearman", "top_k"] and len(sim) == 200
    assert abs(sim.spearman.mean()) < 0.03 and abs(sim.abs_spearman.mean()) < 0.03
    assert abs(sim.top_k.mean() - 5 / 64) < 0.02


def _table(**rows):
    return pd.DataFrame.from_dict(
        rows, orient="index", columns=["abs_rank_corr_full", "abs_rank_corr_data", "deletion_auc"]
    )


def test_recommend_needs_both_randomization_and_faithfulness():
    table = _table(
        sg=[0.62, 0.70, 0.20],  # faithful, but survives randomization
        good=[0.10, 0.25, 0.30],  # passes both
        better=[0.05, 0.05, 0.25],  # passes both, lower deletion AUC
        data_only=[0.10, 0.45, 0.20],  # fails data randomization only
        unfaithful=[0.02, 0.01, 0.45],  # passes randomization, deletion AUC 0.9 x random's
        random_control=[0.0, 0.0, 0.1],
    )  # a lucky control: judged, never recommended
    best, judged = S.recommend(table, random_auc=0.5, default="sg", controls=["random_control"])
    assert best == "better"
    assert list(judged.index[judged.passes]) == ["good", "better", "random_control"]
    assert judged.loc["sg", "failed"] == (
        "abs. rank corr. 0.62 > 0.3 under full randomization; "
        "abs. rank corr. 0.70 > 0.3 under data randomization"
    )
    assert (
        "data randomization" in judged.loc["data_only", "failed"]
        and "full" not in judged.loc["data_only", "failed"]
    )
    assert judged.loc["unfaithful", "failed"] == "deletion AUC 0.450 = 0.90 × random's (0.500) > 0.8"
    assert judged.loc["good", "failed"] == ""
    assert np.isclose(judged.loc["good", "deletion_ratio"], 0.6)
    # the default is kept when it passes, even if another one deletes faster
    assert S.recommend(table, 0.5, default="good")[0] == "good"
    # the 0.8 bar is inclusive
    assert S.recommend(_table(m=[0.3, 0.3, 0.4]), 0.5, default="m")[0] == "m"
    # just above a bar, a value shows the digits that put it above (not "0.30 > 0.3")
    near = S.recommend(_table(m=[0.3004, 0.1, 0.40021]), 0.5, default="m")[1].loc["m", "failed"]
    assert near == (
        "abs. rank corr. 0.3004 > 0.3 under full randomization; "
        "deletion AUC 0.400 = 0.8004 × random's (0.500) > 0.8"
    )


def test_recommend_none_when_nothing_passes():
    table = _table(
        sg=[0.62, 0.70, 0.20],
        occlusion=[0.42, 0.05, 0.28],
        unfaithful=[0.0, 0.0, 0.49],
        constant=[np.nan, 0.1, 0.1],
        random_control=[0.01, 0.0, 0.52],
    )
    best, judged = S.recommend(table, random_auc=0.52, default="sg", controls=["random_control"])
    assert best == "none" and not judged.passes.any()
    assert judged.loc["occlusion", "failed"] == "abs. rank corr. 0.42 > 0.3 under full randomization"
    assert "constant maps" in judged.loc["constant", "failed"]
    assert judged.loc["random_control", "randomization_ok"] and not judged.loc["random_control", "faithful"]
    with pytest.raises(ValueError, match="lacks column"):
        S.recommend(table.drop(columns="abs_rank_corr_data"), 0.5, default="sg")
    with pytest.raises(ValueError, match="default method"):
        S.recommend(table, 0.5, default="lime")
    with pytest.raises(ValueError, match="positive"):
        S.recommend(table, 0.0, default="sg")


def test_verdict_text_says_what_recommend_decided():
    table = _table(sg=[0.62, 0.70, 0.20], better=[0.05, 0.05, 0.25], random_control=[0.0, 0.0, 0.5])
    best, judged = S.recommend(table, random_auc=0.5, default="sg", controls=["random_control"])
    lines = report.verdict_text(judged, best, "sg", "random_control", "pixel", 20, 8)
    assert len(lines) == len(table) + 2
    assert lines[0].startswith("* **sg** (the run's method): fails: abs. rank corr. 0.62")
    assert lines[1] == "* **better**: passes both conditions"
    assert "passes randomization" in lines[3] and "1.00 × random" in lines[3]
    assert lines[-1].startswith("Recommendation: **better**") and "Passing: better." in lines[-1]
    keep = report.verdict_text(judged, "better", "better", "random_control", "pixel", 20, 8)
    assert keep[-1] == "Recommendation: keep **better**."
    lucky = _table(sg=[0.62, 0.70, 0.20], random_control=[0.0, 0.0, 0.1])
    best, judged = S.recommend(lucky, 0.5, default="sg", controls=["random_control"])
    lines = report.verdict_text(judged, best, "sg", "random_control", "pixel", 20, 8)
    assert lines[-2].startswith("**Warning**") and lines[-1].startswith("Recommendation: **none**")


def test_spearman_is_pearson_of_ranks_by_hand():
    """The notebook's by-hand Spearman (rank = values below + (ties + 1) / 2, then Pearson) equals
    ``spearman``."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4, 4)), rng.normal(size=(3, 4, 4))
    a[0, 0, :2] = a[0, 1, :2] = 0.0  # ties share their mean rank

    def ranks(row):
        return (row[:, None] > row[None, :]).sum(1) + ((row[:, None] == row[None, :]).sum(1) + 1) / 2

    by_hand = [np.corrcoef(ranks(x.ravel()), ranks(y.ravel()))[0, 1] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(S.spearman(a, b), by_hand, rtol=1e-12)
    np.testing.assert_allclose(S.abs_spearman(a, b), S.spearman(np.abs(a), np.abs(b)), rtol=1e-12)


def test_spearman_is_the_former_pandas_ranking():
    """``spearman`` ranks with ``scipy.stats.rankdata``; the former code ranked with pandas, then the same
    Pearson: the same numbers, ties (small integers) and a constant map (NaN) included."""

    def reference_rank_correlation(a, b):
        ra = pd.DataFrame(a.reshape(len(a), -1)).rank(axis=1).to_numpy()
        rb = pd.DataFrame(b.reshape(len(b), -1)).rank(axis=1).to_numpy()
        ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
        den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)

    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 4, (20, 8, 8)).astype(float), rng.normal(size=(20, 8, 8))
    b[3] = 1.0
    np.testing.assert_array_equal(S.spearman(a, b), reference_rank_correlation(a, b))
    np.testing.assert_array_equal(S.abs_spearman(b, a), reference_rank_correlation(np.abs(b), np.abs(a)))
