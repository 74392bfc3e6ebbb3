"""The tokenizer protocol (cortex_utils.vq) and its second family (cortex_run.vqvae: FSQ from
vector-quantize-pytorch)."""

import numpy as np
import pytest
import torch

from cortex_run import datasets as tokds
from cortex_run import tokenizers, vqvae
from cortex_utils import vq as vqlib

TINY_FSQ = {
    "family": "vqvae_fsq",
    "levels": [5, 4, 3],
    "image_size": 16,
    "in_channels": 3,
    "ch": 8,
    "z_channels": 8,
    "downsamples": 1,
}


@pytest.fixture
def tiny_fsq():
    return tokenizers.build_vq(TINY_FSQ, seed=0)


def test_both_families_implement_the_protocol(tiny_vq, tiny_fsq):
    for tok in (tiny_vq, tiny_fsq):
        vqlib.check_tokenizer(tok)
        assert isinstance(tok, vqlib.Tokenizer)
    assert (tiny_vq.family, tiny_fsq.family) == ("taming_vqgan", "vqvae_fsq")


class Incomplete:
    family, grid, n_embed, embed_dim, image_size, image_channels = "mine", (2, 2), 4, 3, 8, 3

    def encode(self, images):
        return torch.zeros(len(images), 2, 2, dtype=torch.long)


def test_a_tokenizer_missing_protocol_methods_is_named():
    with pytest.raises(
        TypeError,
        match=r"lacks method codebook\(\), method decode\(\), method "
        r"decode_embeddings\(\), attribute fingerprint",
    ):
        vqlib.encode(Incomplete(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="not a tokenizer"):
        vqlib.vq_meta(object())


class OutOfRange(Incomplete):
    fingerprint = "x"

    def __init__(self, ids):
        self.ids = ids

    def encode(self, images):
        return self.ids

    def codebook(self):
        return torch.zeros(4, 3)

    def decode(self, ids):
        return torch.zeros(len(ids), 3, 8, 8)

    def decode_embeddings(self, embeddings):
        return torch.zeros(len(embeddings), 3, 8, 8)


@pytest.mark.parametrize(
    "ids, match",
    [
        (
            torch.full((1, 2, 2), 4),
            r"OutOfRange.encode returned ids outside its codebook \[0, 4\): got \[4, 4\]",
        ),
        (torch.full((1, 2, 2), -1), r"outside its codebook \[0, 4\)"),
        (torch.zeros(1, 4), r"returned ids of shape \(1, 4\), expected \(1, 2, 2\)"),
        (torch.zeros(1, 2, 2), "returned torch.float32 values, expected integer codebook ids"),
    ],
)
def test_ids_outside_the_codebook_or_of_another_shape_are_refused(ids, match):
    with pytest.raises(ValueError, match=match):
        vqlib.encode(OutOfRange(ids), torch.zeros(1, 3, 8, 8))
    assert vqlib.encode(OutOfRange(torch.full((1, 2, 2), 3)), torch.zeros(1, 3, 8, 8)).dtype == torch.int64


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown tokenizer family 'nope'.*taming_vqgan, vqvae_fsq"):
        tokenizers.build_vq({**TINY_FSQ, "family": "nope"})


def test_fsq_tokens_are_lattice_points(tiny_fsq):
    """An id is a point of the 5 x 4 x 3 lattice; the codebook is its projection, spanning 3 dimensions;
    decoding ids is decoding their codebook rows; the model's own forward pass quantizes to the same rows."""
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    ids = vqlib.encode(tiny_fsq, x)
    assert ids.shape == (4, 8, 8) and int(ids.max()) < 60 == tiny_fsq.n_embed
    cb = vqlib.codebook(tiny_fsq)
    assert cb.shape == (60, 8)
    sv = torch.linalg.svdvals(cb - cb.mean(0))
    assert int((sv > 1e-4 * sv[0]).sum()) == 3
    lattice = tiny_fsq.quantize.implicit_codebook  # by hand: id = l0 + 5 l1 + 20 l2, levels centred on 0
    levels = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(5), indexing="ij"), -1)
    levels = levels.flip(-1).reshape(-1, 3)
    torch.testing.assert_close(lattice, (levels - torch.tensor([2, 2, 1])) / torch.tensor([2, 2, 1]))
    torch.testing.assert_close(
        vqlib.decode(tiny_fsq, ids), vqlib.decode(tiny_fsq, vqlib.embed(tiny_fsq, ids))
    )
    with torch.no_grad():
        zq, own_ids = tiny_fsq.quantize(tiny_fsq.encoder(x))
    assert torch.equal(own_ids.long(), ids)
    torch.testing.assert_close(zq, vqlib.embed(tiny_fsq, ids), atol=1e-5, rtol=1e-5)


def test_fsq_free_embeddings_decode_with_gradient(tiny_fsq):
    emb = torch.randn(2, 8, 8, 8, requires_grad=True)
    vqlib.decode(tiny_fsq, emb, grad=True).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_fsq_safetensors_round_trip_and_fingerprint(tiny_fsq, tmp_path):
    from cortex_run.checkpoints import read_card, save_weights

    path = save_weights(
        tiny_fsq.state_dict(),
        tmp_path / "fsq.safetensors",
        card={"config": tiny_fsq.config},
    )
    loaded = tokenizers.load_vq(read_card(path)["config"], path)
    assert isinstance(loaded, vqvae.FSQVAE) and loaded.fingerprint == tiny_fsq.fingerprint
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(vqlib.encode(loaded, x), vqlib.encode(tiny_fsq, x))
    other = tokenizers.build_vq(TINY_FSQ, seed=1)  # the same lattice, another projection: other embeddings
    assert torch.equal(other.quantize.implicit_codebook, tiny_fsq.quantize.implicit_codebook)
    assert other.fingerprint != tiny_fsq.fingerprint
    with pytest.raises(ValueError, match="missing keys"):
        tokenizers.load_vq({**TINY_FSQ, "downsamples": 2}, path)


def test_a_dataset_of_one_family_is_refused_by_the_other(tiny_vq, tiny_fsq, tmp_path):
    tokens = (
        vqlib.encode(tiny_vq, torch.rand(6, 3, 16, 16) * 2 - 1).numpy() % 60
    )  # ids valid in both codebooks
    labels = np.array([0, 1, 0, 1, 0, 1])
    ds = tokds.save_token_dataset(
        tmp_path / "ds", {"train": (tokens, labels)}, ["a", "b"], vqlib.vq_meta(tiny_vq), source="encoded"
    )
    assert ds.manifest["vq_family"] == "taming_vqgan" == ds.vq_family
    tokds.load_token_dataset(ds.path, vq=tiny_vq)
    with pytest.raises(
        ValueError, match="tokenized by a taming_vqgan model .* the model in use is a vqvae_fsq"
    ):
        tokds.load_token_dataset(ds.path, vq=tiny_fsq)
    fsq_ds = tokds.save_token_dataset(
        tmp_path / "fsq", {"train": (tokens, labels)}, ["a", "b"], vqlib.vq_meta(tiny_fsq), source="encoded"
    )
    with pytest.raises(ValueError, match="codebook fingerprint"):  # same family, another model
        tokds.load_token_dataset(fsq_ds.path, vq=tokenizers.build_vq(TINY_FSQ, seed=1))


def test_a_manifest_without_family_is_taming(tiny_vq, tmp_path):
    import json

    ds = tokds.save_token_dataset(
        tmp_path / "ds",
        {"train": (np.zeros((2, 8, 8), int), np.array([0, 1]))},
        ["a", "b"],
        vqlib.vq_meta(tiny_vq),
        source="encoded",
    )
    manifest = json.loads((ds.path / "manifest.json").read_text())
    del manifest["vq_family"]
    (ds.path / "manifest.json").write_text(json.dumps(manifest))
    assert tokds.load_token_dataset(ds.path, vq=tiny_vq).vq_family == "taming_vqgan"


def test_the_run_registry_loads_the_registered_family(tiny_fsq, tmp_path):
    from cortex_run.artifacts import register
    from cortex_run.checkpoints import save_weights

    path = save_weights(tiny_fsq.state_dict(), tmp_path / "fsq.safetensors", card={"config": tiny_fsq.config})
    register(tmp_path / "run", "vq", family="vqvae_fsq", config=tiny_fsq.config, checkpoint=str(path))
    loaded = tokenizers.load_run_vq(tmp_path / "run")
    assert loaded.family == "vqvae_fsq" and loaded.fingerprint == tiny_fsq.fingerprint


def test_short_fsq_training_improves_reconstruction():
    from cortex_run import digits

    vq = tokenizers.build_vq(TINY_FSQ, seed=0)
    gray = digits.load_gray_digits()[0][:200, ::2, ::2]  # 16x16 digits
    val = digits.augment_batch(gray[:32], np.random.default_rng(1))
    before = vqlib.reconstruction_report(vq, val)["psnr_db"]
    log = vqvae.train_vqvae(vq, gray, val, steps=40, batch_size=16, lr=3e-3, log_every=10)
    after = vqlib.reconstruction_report(vq, val)["psnr_db"]
    assert after > before + 3, (before, after)
    assert log["batch_codes_used"].iloc[-1] > 1
