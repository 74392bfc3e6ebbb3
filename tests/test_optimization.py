import numpy as np
import pytest
import torch
from torch import nn

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
    assert np.array_equal(opt.region_mask((4, 4), slice(1, 3), (0, 4)), np.repeat([[0], [1], [1], [0]], 4, 1) > 0)
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
        opt.optimize_tokens(linear, cb, tokens, region, target=5, steps=2, progress=False)
    with pytest.raises(ValueError, match="same class"):
        opt.optimize_embeddings(linear, cb, tokens, region, target=1, source=1, steps=2, progress=False)
    with pytest.raises(ValueError, match="region_mask must be bool"):
        opt.optimize_tokens(linear, cb, tokens, np.ones((3, 3), bool), target=1, steps=2, progress=False)
    with pytest.raises(ValueError, match="empty"):
        opt.optimize_tokens(linear, cb, tokens, np.zeros(GRID, bool), target=1, steps=2, progress=False)


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
        opt.optimize_tokens(_NaNAfter(linear, 3), cb, tokens, region, target=1, steps=5, progress=False)
    with pytest.raises(FloatingPointError, match="at step 1"):
        opt.optimize_embeddings(_NaNAfter(linear, 2), cb, tokens, region, target=1, steps=5, progress=False)


def test_token_optimization_finds_the_linear_optimum_and_keeps_the_outside():
    cb, linear, _, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    res = opt.optimize_tokens(linear, cb, tokens, region, target=2, steps=60, lr=0.5, seed=1, snapshot_every=20,
                              progress=False)
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
    again = opt.optimize_tokens(linear, cb, tokens, region, target=2, steps=60, lr=0.5, seed=1, progress=False)
    assert again["history"].equals(hist)  # seeded


def test_token_optimization_increases_a_nonlinear_iem_logit():
    cb, _, conv, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (0, 3))
    res = opt.optimize_tokens(conv, cb, tokens, region, target=0, source=1, steps=60, lr=0.5, seed=1, progress=False)
    logits = res["history"].target_logit.to_numpy()
    assert res["best_logit"] > res["original_logit"]
    assert logits[-10:].mean() > logits[:10].mean()  # it learns, not only random search
    r = torch.from_numpy(region)
    assert torch.equal(res["tokens"][~r], tokens[~r])


def test_tokens_outside_the_region_never_change_with_a_real_iem_and_small_init_logit():
    cb, _, _, tokens = _setup()
    iem = build_iem("resnet_se", D, GRID, 3, width=4)
    region = opt.region_mask(GRID, (0, 2), (2, 4))
    res = opt.optimize_tokens(iem, cb, tokens, region, target=1, steps=15, lr=0.5, init_logit=0.1,
                              snapshot_every=1, progress=False)
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
    assert torch.equal(opt.snap_to_codebook(cb[brute[0]].permute(2, 0, 1), cb), brute[0])  # codebook rows snap to themselves
    with pytest.raises(ValueError, match="embeddings must be"):
        opt.snap_to_codebook(torch.randn(2, 5, 4, 4), cb)


def test_embedding_optimization_increases_the_logit_and_keeps_the_outside():
    cb, linear, conv, tokens = _setup()
    region = opt.region_mask(GRID, (1, 3), (1, 3))
    r = torch.from_numpy(region)
    for iem in (linear, conv):
        res = opt.optimize_embeddings(iem, cb, tokens, region, target=2, steps=30, lr=0.1, snapshot_every=10,
                                      progress=False)
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
    opt.check_outside_unchanged(np.stack([before.numpy()] * 2), np.stack([inside.numpy(), before.numpy()]), region)
    outside = inside.clone()
    outside[0, 0], outside[3, 3] = 5, 5  # two positions outside
    with pytest.raises(AssertionError, match=r"2 token\(s\) changed outside"):
        opt.check_outside_unchanged(before, outside, region)
    with pytest.raises(AssertionError, match=r"2 token\(s\) changed outside"):
        opt.check_outside_unchanged(torch.stack([before, before]), torch.stack([inside, outside]), region)
    with pytest.raises(ValueError, match="must match"):
        opt.check_outside_unchanged(before, before[:3], region)
