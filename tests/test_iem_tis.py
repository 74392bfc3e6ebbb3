import numpy as np
import pytest
import torch
from tis_reference import smoothgrad_per_sample

from cortex_run import passes
from cortex_utils import iem as iemlib
from cortex_utils import tis as tislib
from cortex_utils.tis import Noise

GRID = (8, 8)


@pytest.fixture(params=[1, 2, 3, 4], ids=lambda a: iemlib.ARCHITECTURES[a])
def model(request):
    torch.manual_seed(0)
    m = iemlib.build_iem(request.param, in_channels=6, grid=GRID, n_classes=5, width=16)
    m(torch.randn(4, 6, *GRID))  # touch BatchNorm statistics
    return m.eval()


def test_every_architecture_maps_grids_to_logits(model):
    assert model(torch.randn(3, 6, *GRID)).shape == (3, 5)


def test_wrong_input_shape_and_nan_are_named(model):
    with pytest.raises(ValueError, match=r"expects embeddings \(N, 6, 8, 8\)"):
        iemlib.check_input(model, torch.randn(2, 7, *GRID))
    x = torch.randn(2, 6, *GRID)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf in the embeddings \\(batch 3\\)"):
        tislib.attribute(model, x, torch.tensor([0, 1]), noise=Noise(2), where="batch 3")


@pytest.mark.parametrize("reduction", ["max", "mean"])
def test_batched_tis_equals_per_sample_loop(model, reduction):
    torch.manual_seed(1)
    x = torch.randn(5, 6, *GRID)
    target = torch.tensor([0, 1, 2, 3, 4])
    noise = Noise(4, 0.2).draw(x, torch.Generator().manual_seed(0))
    fast = tislib.attribute(model, x, target, reduction=reduction, noise=noise)
    ref = tislib.reduce_channels(smoothgrad_per_sample(model, x, target, noise), reduction)
    assert fast.shape == (5, *GRID)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_noise_scale_follows_batch_range():
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0, 0, 0] = 5.0
    noise = Noise(200, 0.2).draw(x, torch.Generator().manual_seed(0))
    assert abs(noise.std().item() - 1.0) < 0.02  # 0.2 * (5 - 0)


def test_training_mode_is_refused(model):
    model.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        tislib.attribute(model, torch.randn(2, 6, *GRID), torch.tensor([0, 1]), noise=Noise(1))


def test_unknown_reduction():
    with pytest.raises(ValueError, match="choose one of"):
        tislib.reduce_channels(torch.zeros(1, 2, 3, 3), "ave")


def _ten_grids(tmp_path):
    """A small IEM (vgg, 6-dim embeddings, 3 classes), a token dataset of 10 train grids and a codebook of
    16."""
    from cortex_run import datasets as tokds

    torch.manual_seed(0)
    model = iemlib.build_iem(1, 6, GRID, 3, width=8).eval()
    rng = np.random.default_rng(0)
    meta = {"vq_fingerprint": "x", "n_embed": 16, "embed_dim": 6, "grid": list(GRID)}
    ds = tokds.save_token_dataset(
        tmp_path / "ds",
        {"train": (rng.integers(0, 16, (10, 8, 8)), np.arange(10) % 3)},
        ["a", "b", "c"],
        meta,
        source="t",
    )
    cb = torch.randn(16, 6)
    return model, ds, cb


def test_dataset_tis_resumes_and_matches(tmp_path):
    from cortex_run import datasets as tokds

    model, ds, cb = _ten_grids(tmp_path)
    full = tislib.dataset_tis(
        model, tokds.embedding_loader(ds, "train", cb, batch_size=4), 10, noise=Noise(3)
    )
    # interrupt after the first chunk, then resume into the same file
    loader = tokds.embedding_loader(ds, "train", cb, batch_size=4)
    first = [next(iter(loader))]
    with pytest.raises(RuntimeError, match="missing for 6 images"):
        tislib.dataset_tis(model, first, 10, out=tmp_path / "tis.npy", noise=Noise(3))
    assert (tmp_path / "tis.done.npy").exists()
    resumed = tislib.dataset_tis(model, loader, 10, out=tmp_path / "tis.npy", noise=Noise(3))
    np.testing.assert_allclose(resumed, full, atol=1e-6)
    assert not (tmp_path / "tis.done.npy").exists()


def test_dataset_tis_takes_any_attribution_method(tmp_path):
    """dataset_tis(method=...) gives, batch by batch, the method's scores from the one interface; the default
    is SmoothGrad (the paper's); an unknown method is refused before any work."""
    from cortex_run import datasets as tokds

    model, ds, cb = _ten_grids(tmp_path)
    x = cb[torch.from_numpy(ds.tokens["train"].astype(np.int64))].permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(ds.labels["train"].astype(np.int64))
    for method, options in [
        ("occlusion", {"baseline": cb[3]}),
        ("integrated_gradients", {"steps": 4}),
        ("gradient", {}),
    ]:
        got = tislib.dataset_tis(
            model, tokds.embedding_loader(ds, "train", cb, batch_size=4), 10, method, **options
        )
        want = torch.cat(
            [tislib.attribute(model, x[i : i + 4], y[i : i + 4], method, **options) for i in (0, 4, 8)]
        )
        np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-6)
    default = tislib.dataset_tis(
        model, tokds.embedding_loader(ds, "train", cb, batch_size=4), 10, noise=Noise(3), seed=2
    )
    first = tislib.attribute(model, x[:4], y[:4], "smoothgrad", noise=Noise(3), seed=2 * 1_000_003)
    np.testing.assert_array_equal(default[:4], first.numpy())
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        tislib.dataset_tis(model, tokds.embedding_loader(ds, "train", cb, batch_size=4), 10, method="lime")


def test_an_option_the_method_does_not_take_is_an_error_naming_it(tmp_path):
    """Every method takes its own options (its signature); another method's option is refused, named, before
    any work: SmoothGrad's noise for the gradient, IG's steps for occlusion or SmoothGrad."""
    from cortex_run import datasets as tokds

    model, ds, cb = _ten_grids(tmp_path)
    x, y = torch.randn(2, 6, *GRID), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="gradient takes no option noise; its options: none"):
        tislib.attribute(model, x, y, "gradient", noise=Noise(100))
    with pytest.raises(
        ValueError, match="occlusion takes no option steps; its options: baseline, group, batch"
    ):
        tislib.attribute(model, x, y, "occlusion", steps=4)
    loader = tokds.embedding_loader(ds, "train", cb, batch_size=4)
    with pytest.raises(ValueError, match="smoothgrad takes no option nsamples, steps"):
        tislib.dataset_tis(model, loader, 10, nsamples=3, steps=4)
    with pytest.raises(ValueError, match="integrated_gradients takes no option seed"):
        tislib.attribute_tokens(
            model, cb, ds.tokens["train"], ds.labels["train"], "integrated_gradients", seed=1
        )
    # a run's settings for every method: each method gets its own
    assert tislib.method_options("gradient", Noise(5), 1, 8, 2, cb[0]) == {}
    assert tislib.method_options("occlusion", Noise(5), 1, 8, 2, None) == {"group": 2, "baseline": None}
    assert tislib.method_options("smoothgrad", Noise(5), 1) == {"noise": Noise(5), "seed": 1}


def test_topk_positions_ranks_every_position_or_none():
    a = np.array([[[1.0, 3.0], [3.0, 2.0]]])
    np.testing.assert_array_equal(
        tislib.topk_positions(a, None), [[1, 2, 3, 0]]
    )  # ties: the smaller position
    assert tislib.topk_positions(a, 0).shape == (1, 0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        tislib.topk_agreement(a, a, k=0)


def test_unknown_architecture_and_small_grid():
    with pytest.raises(ValueError, match="unknown IEM architecture 7"):
        iemlib.build_iem(7, 6, GRID, 5)
    with pytest.raises(ValueError, match="at least 4x4"):
        iemlib.build_iem(1, 6, (2, 2), 5)


def _ranged_batch():
    """Three 2x2x2 'images' with different value ranges: 4, 1 and 10 (the batch's: 10)."""
    x = torch.zeros(3, 2, 2, 2)
    x[0, 0, 0, 0], x[0, 1, 1, 1] = 3.0, -1.0  # range 4
    x[1] += 0.5
    x[1, 1, 0, 1] = 1.5  # range 1
    x[2, 0, 1, 0], x[2, 1, 0, 0] = -6.0, 4.0  # range 10
    return x


def test_per_image_sigma_is_each_images_own_range():
    x = _ranged_batch()
    by_hand = torch.tensor([0.2 * (float(im.max()) - float(im.min())) for im in x])  # 0.8, 0.2, 2.0
    torch.testing.assert_close(tislib.noise_sigma(x, 0.2, "image").flatten(), by_hand)
    torch.testing.assert_close(tislib.noise_sigma(x, 0.2, "image").flatten(), torch.tensor([0.8, 0.2, 2.0]))
    noise = Noise(3, 0.2, sigma="image").draw(x, torch.Generator().manual_seed(5))
    draws = torch.randn((3, *x.shape), generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(noise, draws * by_hand.view(1, 3, 1, 1, 1))
    # the same draws, only the scale differs from the per-batch sigma (0.2 * 10 = 2 for every image)
    batch = Noise(3, 0.2).draw(x, torch.Generator().manual_seed(5))
    torch.testing.assert_close(batch, draws * 2.0)
    # an image's per-image sigma does not depend on its neighbours
    torch.testing.assert_close(
        tislib.noise_sigma(x[1:2], 0.2, "image"), tislib.noise_sigma(x, 0.2, "image")[1:2]
    )


def test_per_batch_sigma_is_the_default_and_unchanged():
    x = _ranged_batch()
    assert float(tislib.noise_sigma(x, 0.2)) == pytest.approx(2.0)
    g = torch.Generator().manual_seed(3)
    expected = torch.randn((4, *x.shape), generator=g) * (0.2 * (x.max() - x.min()))  # the paper's formula
    assert torch.equal(Noise(4, 0.2).draw(x, torch.Generator().manual_seed(3)), expected)
    with pytest.raises(ValueError, match="unknown sigma 'pixel'"):
        tislib.noise_sigma(x, 0.2, "pixel")
    with pytest.raises(ValueError, match="unknown sigma 'pixel'"):
        Noise(sigma="pixel")


def test_per_image_sigma_reaches_the_scores(model):
    x = torch.randn(4, 6, *GRID) * torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)
    y = torch.tensor([0, 1, 2, 3])
    image = tislib.attribute(model, x, y, noise=Noise(3, sigma="image"), seed=0)
    noise = Noise(3, 0.2, sigma="image").draw(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(image, tislib.attribute(model, x, y, noise=noise))
    batch = tislib.attribute(model, x, y, noise=Noise(3), seed=0)
    assert not torch.allclose(image, batch)


def test_dataset_tis_seeds_each_batch_from_its_first_row(model):
    torch.manual_seed(2)
    x, y = torch.randn(6, 6, *GRID), torch.tensor([0, 1, 2, 3, 4, 0])
    batches = [(x[:4], y[:4], torch.arange(4)), (x[4:], y[4:], torch.arange(4, 6))]
    got = tislib.dataset_tis(model, batches, 6, noise=Noise(2), seed=7)
    first = tislib.attribute(model, x[:4], y[:4], noise=Noise(2), seed=7 * 1_000_003)
    second = tislib.attribute(model, x[4:], y[4:], noise=Noise(2), seed=7 * 1_000_003 + 4)
    np.testing.assert_array_equal(got, torch.cat([first, second]).numpy())


def test_topk_agreement_on_hand_made_maps():
    a = np.array(
        [
            [[9, 8], [7, 0]],  # top-2: positions 0, 1
            [[0, 1], [2, 3]],  # top-2: 3, 2
            [[5, 5], [5, 1]],
        ],  # top-2 with a tie: 0, 1 (the smaller positions)
        dtype=np.float32,
    )
    b = np.array(
        [
            [[9, 0], [8, 1]],  # top-2: 0, 2 -> shares 1 of 2
            [[3, 2], [1, 0]],  # top-2: 0, 1 -> shares none
            [[5, 4], [5, 6]],
        ],  # top-2: 3, then 0 (tie with 2, the smaller) -> shares 1
        dtype=np.float32,
    )
    np.testing.assert_array_equal(tislib.topk_positions(a, 2), [[0, 1], [3, 2], [0, 1]])
    np.testing.assert_array_equal(tislib.topk_agreement(a, b, k=2), [0.5, 0.0, 0.5])
    np.testing.assert_array_equal(tislib.topk_agreement(b, a, k=2), [0.5, 0.0, 0.5])  # symmetric
    np.testing.assert_array_equal(tislib.topk_agreement(a, a, k=3), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(tislib.topk_agreement(a, b, k=4), [1.0, 1.0, 1.0])  # every position
    np.testing.assert_array_equal(
        tislib.topk_agreement(a, -a + 0.5 * np.arange(4).reshape(2, 2), k=1)[:2], [0.0, 0.0]
    )
    with pytest.raises(ValueError, match="different shapes"):
        tislib.topk_agreement(a, b[:2])
    with pytest.raises(ValueError, match=r"k must lie in \[0, 4\]"):
        tislib.topk_agreement(a, b, k=5)


def test_seed_agreement_averages_every_pair():
    a = np.array([[4.0, 3.0, 2.0, 1.0]])  # top-2: 0, 1
    b = np.array([[4.0, 1.0, 3.0, 2.0]])  # top-2: 0, 2
    c = np.array([[1.0, 2.0, 3.0, 4.0]])  # top-2: 3, 2
    # pairs: a-b 1/2, a-c 0, b-c 1/2 -> 1/3
    np.testing.assert_allclose(tislib.seed_agreement([a, b, c], k=2), [1 / 3])
    np.testing.assert_allclose(tislib.seed_agreement([a, b], k=2), [0.5])
    with pytest.raises(ValueError, match="at least two seeds"):
        tislib.seed_agreement([a])


def test_paired_mean_se_reads_the_direction_against_two_standard_errors():
    b = np.zeros(4)
    mean, se, sign = tislib.paired_mean_se([1.0, 1.2, 0.8, 1.0], b)  # mean 1, sd 0.163, se 0.082
    assert np.isclose(mean, 1.0) and np.isclose(se, np.std([1.0, 1.2, 0.8, 1.0], ddof=1) / 2) and sign == 1
    assert tislib.paired_mean_se(b, [1.0, 1.2, 0.8, 1.0])[2] == -1
    assert tislib.paired_mean_se([1.0, -1.0, 0.5, -0.4], b)[2] == 0  # mean 0.025, within 2 se
    assert tislib.paired_mean_se([3.0], [1.0]) == (2.0, float("inf"), 0)  # one image: no standard error


def test_the_torchrun_job_refuses_more_processes_than_batches_before_launching(tmp_path):
    """Notebook 05's nproc > 1 (``distributed.tis_job``) checks the world against each split's batches
    before it starts torchrun: 10 rows in batches of 4 are 3 batches, so at most 3 processes."""
    from cortex_run import distributed

    _, ds, _ = _ten_grids(tmp_path)
    with pytest.raises(ValueError, match="at most 3 shards"):
        distributed.tis_job(ds, ["train"], tmp_path / "tis", nproc=4, batch_size=4)


def test_smoothgrad_by_hand_matches_the_batched_pass(model):
    """The notebook's by-hand SmoothGrad (one forward and backward per copy per image, sigma from the batch)
    equals tis.smoothgrad given the same seed."""
    x, y = torch.randn(3, 6, *GRID), torch.tensor([0, 2, 4])
    draws = torch.randn((4, *x.shape), generator=torch.Generator().manual_seed(5))
    sd = 0.2 * (x.max() - x.min())
    grad = torch.zeros_like(x)
    for eps in draws:
        for i in range(len(x)):
            noisy = (x[i] + sd * eps[i]).unsqueeze(0).requires_grad_(True)
            grad[i] += torch.autograd.grad(model(noisy)[0, y[i]], noisy)[0][0]
    fast = tislib.attribute(model, x, y, "smoothgrad", "max", noise=Noise(4, 0.2), seed=5)
    torch.testing.assert_close(fast, (grad / 4).amax(1), atol=1e-5, rtol=0)


# --- the ViT's attention through scaled_dot_product_attention -----------------------------------------------


def _attention_as_before(layer, x):
    """An encoder layer with its attention through nn.MultiheadAttention's own forward (the code before)."""
    h = layer.ln1(x)
    x = x + layer.drop(
        layer.bn1.bn(layer.attn(h, h, h, need_weights=False)[0].transpose(1, 2)).transpose(1, 2)
    )
    return x + layer.drop(layer.bn2.bn(layer.mlp(layer.ln2(x)).transpose(1, 2)).transpose(1, 2))


def test_vit_attention_is_multihead_attention():
    torch.manual_seed(0)
    layer = iemlib.EncoderLayer(16, 4, 0.0)
    layer(torch.randn(8, 5, 16))  # touch BatchNorm statistics
    layer.eval()
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(
        iemlib.self_attention(layer.attn, x), layer.attn(x, x, x, need_weights=False)[0], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(layer(x), _attention_as_before(layer, x), atol=1e-6, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the fast mode's explicit attention: bfloat16 rounding
        fast = iemlib.self_attention(layer.attn, x).float()
    torch.testing.assert_close(fast, layer.attn(x, x, x, need_weights=False)[0], atol=0.05, rtol=0.05)


@pytest.mark.parametrize("shipped", ["iem4.safetensors", "vqvae_fsq/iem4.safetensors"])
def test_shipped_vit_loads_and_gives_the_logits_of_multihead_attention(shipped):
    """The shipped ViTs load with every key (load_iem checks them) and the new attention gives their logits
    (the taming family's on its real test grids, the FSQ family's on random embeddings of its shape)."""
    from cortex_run import REPO_ROOT
    from cortex_run.checkpoints import load_iem, load_state_dict

    model = load_iem(REPO_ROOT / "checkpoints" / shipped, expect={"arch": 4})
    if shipped == "iem4.safetensors":
        codebook = load_state_dict(REPO_ROOT / "checkpoints" / "vq_mnist.safetensors")[
            "quantize.embedding.weight"
        ]
        tokens = np.load(REPO_ROOT / "data" / "default" / "generated" / "test_tokens.npy")[:16].astype(
            np.int64
        )
        x = codebook[torch.from_numpy(tokens)].permute(0, 3, 1, 2)
    else:
        x = torch.randn(
            16,
            model.cortex_spec["in_channels"],
            *model.cortex_spec["grid"],
            generator=torch.Generator().manual_seed(0),
        )
    tokens_in = (
        torch.cat([model.cls.expand(len(x), -1, -1), model.proj(x.flatten(2).transpose(1, 2))], 1) + model.pos
    )
    h = tokens_in
    for layer in model.layers:
        h = _attention_as_before(layer, h)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.norm(h)[:, 0]), atol=1e-5, rtol=0)


# --- the exact mode's passes, the memory budget, the fast mode and reduced-variance draws -------------------


def test_threads_do_not_change_the_numbers_and_passes_only_the_last_bits(model):
    """The passes (set by the batch, the model and the memory budget, not by the threads) hold the same
    per-copy computations whether they run side by side or one after the other: bit-identical gradients.
    Another cut into passes may take other kernels (e.g. matrix-vector products for passes of one copy)."""
    torch.manual_seed(3)
    x, y = torch.randn(6, 6, *GRID), torch.tensor([0, 1, 2, 3, 4, 0])
    noise = Noise(5, 0.2).draw(x, torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # two workers
        two = [tislib.smoothgrad(model, x, y, noise, batch=m) for m in (4, None)]
        torch.set_num_threads(1)  # one worker
        one = [tislib.smoothgrad(model, x, y, noise, batch=m) for m in (4, None)]
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before  # the workers' thread setting does not leak
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    for batch in (1, 7, 30):
        torch.testing.assert_close(
            tislib.smoothgrad(model, x, y, noise, batch=batch), one[0], atol=1e-5, rtol=0
        )


def test_smoothgrad_works_inside_no_grad(model):
    x, y = torch.randn(2, 6, *GRID), torch.tensor([0, 1])
    with torch.no_grad():
        got = tislib.smoothgrad(model, x, y, Noise(2), seed=0)
    torch.testing.assert_close(got, tislib.smoothgrad(model, x, y, Noise(2), seed=0))


def test_bytes_per_row_on_a_layer_counted_by_hand():
    """One conv keeps its input for the backward pass: 2 x 4 x 4 float32 = 128 bytes per copy; doubled for
    the backward pass's temporaries, plus the copy and its gradient (2 x 128): 512 bytes."""
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(5, 2, 4, 4)
    assert passes.bytes_per_row(conv, x) == 2 * 128 + 2 * 128
    assert passes.rows_per_pass(conv, x, memory_mb=tislib.MAX_WORKERS) == 2**20 // 512  # 1 MB per pass
    assert passes.rows_per_pass(conv, x, memory_mb=1e-9) == 1


def test_the_memory_budget_sizes_the_passes(model, monkeypatch):
    x, y = torch.randn(4, 6, *GRID), torch.tensor([0, 1, 2, 3])
    per_row = passes.bytes_per_row(model, x)
    sizes = []
    forward = model.forward
    monkeypatch.setattr(
        model, "forward", lambda inp: sizes.append(len(inp)) or forward(inp)
    )  # (list.append is atomic)
    # a pass gets 1 / MAX_WORKERS of the budget: here 3.5 copies' worth -> passes of 3 of the 40 noisy copies
    batch = passes.rows_per_pass(model, x, memory_mb=tislib.MAX_WORKERS * 3.5 * per_row / 2**20)
    tislib.smoothgrad(model, x, y, Noise(10), batch=batch)
    assert batch == 3 and sizes[:2] == [2, 1]  # bytes_per_row's two probes
    assert sorted(sizes[2:], reverse=True) == [3] * 13 + [1]
    sizes.clear()  # a large budget: at least MIN_PASSES passes on the CPU, of at least MIN_ROWS copies
    x, y = torch.randn(70, 6, *GRID), torch.arange(70) % 5
    tislib.smoothgrad(model, x, y, Noise(20))
    assert sizes == [175] * 8  # 1400 copies: ceil(1400 / 8)
    sizes.clear()
    tislib.smoothgrad(model, x[:10], y[:10], Noise(20))
    assert sorted(sizes, reverse=True) == [128, 72]  # 200 copies: passes of MIN_ROWS (run side by side)


def test_fast_mode_is_close_and_refused_where_bfloat16_is_not_native(model, monkeypatch):
    torch.manual_seed(4)
    x, y = torch.randn(8, 6, *GRID), torch.arange(8) % 5
    noise = Noise(4, 0.2).draw(x, torch.Generator().manual_seed(0))
    exact = tislib.smoothgrad(model, x, y, noise)
    if tislib.bf16_supported():
        fast = tislib.smoothgrad(model, x, y, noise, precision="bfloat16")
        assert fast.dtype == torch.float32 and fast.shape == exact.shape
        assert float(torch.nn.functional.cosine_similarity(fast.flatten(), exact.flatten(), 0)) > 0.95
        assert not torch.equal(fast, exact)  # it is another computation
    with pytest.raises(ValueError, match="unknown precision 'float16'"):
        tislib.smoothgrad(model, x, y, noise, precision="float16")
    monkeypatch.setattr(tislib, "bf16_supported", lambda device="cpu": False)
    with pytest.raises(ValueError, match="needs a device that computes in bfloat16"):
        tislib.smoothgrad(model, x, y, noise, precision="bfloat16")


def test_antithetic_draws_come_in_pairs():
    x = torch.randn(3, 2, 4, 4)
    noise = Noise(6, 0.2, draws="antithetic").draw(x, torch.Generator().manual_seed(0))
    assert noise.shape == (6, *x.shape)
    assert torch.equal(noise[:3], -noise[3:])
    with pytest.raises(ValueError, match="nsamples must be even, got 5"):
        Noise(5, draws="antithetic")
    with pytest.raises(ValueError, match="unknown draws 'halton'"):
        Noise(4, draws="halton")


def test_sobol_draws_are_standard_normal_and_evenly_spread():
    x = torch.zeros(50, 4, 4, 4)
    x[0, 0, 0, 0] = 5.0  # sigma = 0.2 * 5 = 1
    sobol = Noise(16, 0.2, draws="sobol").draw(x, torch.Generator().manual_seed(0))
    gauss = Noise(16, 0.2).draw(x, torch.Generator().manual_seed(0))
    assert sobol.shape == gauss.shape and sobol.dtype == torch.float32
    assert abs(float(sobol.mean())) < 0.02 and abs(float(sobol.std()) - 1) < 0.02  # N(0, 1) per value
    # each value's 16 draws: a scrambled Sobol set is stratified in every coordinate, so the mean of a value's
    # draws is far closer to 0 than that of 16 independent draws (whose standard error is 1/4)
    assert float(sobol.mean(0).abs().mean()) < 0.3 * float(gauss.mean(0).abs().mean())
    assert not torch.equal(sobol[:, 0], sobol[:, 1])  # each image its own randomisation
    again = Noise(16, 0.2, draws="sobol").draw(x, torch.Generator().manual_seed(0))
    assert torch.equal(sobol, again)
    with pytest.raises(ValueError, match="at most 21201 values per image"):
        Noise(4, draws="sobol").draw(torch.zeros(1, 256, 16, 16))


class _Quadratic(torch.nn.Module):
    """logit_c = x^T A_c x: its input gradient is linear in x, so SmoothGrad's truth is the noise-free
    gradient."""

    def __init__(self, dim=6 * 4 * 4, classes=3):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(classes, dim, dim) / dim)
        self.cortex_spec = {"arch": "quadratic", "in_channels": 6, "grid": [4, 4], "n_classes": classes}

    def forward(self, x):
        flat = x.flatten(1)
        return torch.einsum("bi,cij,bj->bc", flat, self.a, flat)


def test_reduced_variance_draws_where_the_truth_is_known():
    """On a model whose gradient is linear in its input, the mean gradient over antithetic pairs is the
    noise-free gradient exactly (each pair's noise cancels); Gaussian draws scatter around it, Sobol draws
    less."""
    torch.manual_seed(5)
    model = _Quadratic().eval()
    x, y = torch.randn(4, 6, 4, 4), torch.tensor([0, 1, 2, 0])
    truth = tislib.smoothgrad(model, x, y, Noise(1, 0.0))
    err = {
        d: float((tislib.smoothgrad(model, x, y, Noise(16, draws=d), seed=1) - truth).abs().mean())
        for d in tislib.DRAWS
    }
    assert err["antithetic"] < 1e-5 * float(truth.abs().mean())
    assert err["sobol"] < 0.5 * err["gaussian"]
