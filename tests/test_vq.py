import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import IMAGENET_F16_16384_CONFIG

from cortex_run import taming_vq, tokenizers
from cortex_utils import vq as vqlib


def test_import_does_not_load_lightning():
    """Kernel start-up: the VQ seam uses taming's plain torch modules only (taming.models.* import
    Lightning)."""
    code = (
        "import sys, cortex_run.tokenizers as v, cortex_run.taming_vq as t; v.build_vq(t.DEFAULT_VQ_CONFIG); "
        "print(sorted(m for m in ('pytorch_lightning', 'lightning_fabric', 'torchmetrics', 'taming.main') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_taming_lightning_models_import_under_lightning_2_without_leaving_a_fake_transformers():
    taming_vq._import_taming()
    import pytorch_lightning.utilities.distributed as dist
    from taming.models.vqgan import VQModel  # noqa: F401
    from taming.modules.transformer import mingpt

    assert callable(dist.rank_zero_only)
    assert callable(mingpt.top_k_top_p_filtering)
    assert "transformers" not in sys.modules or hasattr(sys.modules["transformers"], "__file__")


def test_same_weights_keys_and_outputs_as_tamings_lightning_vqmodel(tiny_config):
    """``TamingVQ`` is taming's ``VQModel`` without Lightning: from the same seed, the same state dict
    (keys, shapes, values) and the same tokens and images."""
    from taming.models.vqgan import VQModel

    ours = tokenizers.build_vq(tiny_config, seed=0)
    torch.manual_seed(0)
    theirs = taming_vq.instantiate(
        {**tiny_config, "params": {**tiny_config["params"], "lossconfig": taming_vq.DUMMY_LOSS}}
    )
    assert isinstance(theirs, VQModel) and not isinstance(ours.model, VQModel)
    theirs.eval()
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(vqlib.encode(ours, x), theirs.encode(x)[2][2].reshape(2, 8, 8))
        zq = theirs.encode(x)[0]
        assert torch.equal(vqlib.decode(ours, zq), theirs.decode(zq).clamp(-1, 1))


def test_imagenet_f16_16384_keys_match_tamings_vqmodel():
    taming_vq._import_taming()  # the shims first: this test may run alone
    from taming.models.vqgan import VQModel

    cfg = IMAGENET_F16_16384_CONFIG
    with torch.device("meta"):
        ours = tokenizers.build_vq(cfg).model
        theirs = VQModel(**{**cfg["params"], "lossconfig": taming_vq.DUMMY_LOSS})
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }


def test_another_taming_vq_class_is_built_by_taming(tiny_config, tiny_vq):
    """A ``VQModel`` subclass named in a config is built by taming itself (imports Lightning); the same layout
    loads our weights."""
    from taming.models.vqgan import VQNoDiscModel

    model = tokenizers.build_vq({**tiny_config, "target": "taming.models.vqgan.VQNoDiscModel"})
    assert isinstance(model.model, VQNoDiscModel) and vqlib.grid_shape(model) == (8, 8)
    model.model.load_state_dict(tiny_vq.state_dict())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(vqlib.encode(model, x), vqlib.encode(tiny_vq, x))
    with pytest.raises(ValueError, match="is not a taming VQModel"):
        tokenizers.build_vq({**tiny_config, "target": "torch.nn.Identity"})


def test_encode_embed_decode_shapes_and_consistency(tiny_vq):
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    tokens = vqlib.encode(tiny_vq, x)
    assert tokens.shape == (3, 8, 8) and tokens.dtype == torch.int64
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 32
    emb = vqlib.embed(tiny_vq, tokens)
    assert emb.shape == (3, 8, 8, 8)
    cb = vqlib.codebook(tiny_vq)
    assert torch.equal(emb[1, :, 2, 5], cb[tokens[1, 2, 5]])
    # the quantizer's own output is the codebook lookup
    z = tiny_vq.model.quant_conv(tiny_vq.model.encoder(x))
    zq, _, _ = tiny_vq.model.quantize(z)
    torch.testing.assert_close(zq.detach(), emb)
    img_t, img_e = vqlib.decode(tiny_vq, tokens), vqlib.decode(tiny_vq, emb)
    assert img_t.shape == (3, 3, 16, 16)
    torch.testing.assert_close(img_t, img_e)
    assert img_t.abs().max() <= 1


def test_decode_free_embeddings_with_gradient(tiny_vq):
    emb = torch.randn(2, 8, 8, 8, requires_grad=True)
    vqlib.decode(tiny_vq, emb, grad=True).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 3, 32, 32), (3, 16, 16)])
def test_wrong_image_shape_is_named(tiny_vq, shape):
    with pytest.raises(ValueError, match=r"expects images of shape \(N, 3, 16, 16\)"):
        vqlib.encode(tiny_vq, torch.zeros(shape))


def test_uint8_images_are_refused(tiny_vq):
    with pytest.raises(TypeError, match="float"):
        vqlib.encode(tiny_vq, torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_token_ids_outside_codebook(tiny_vq):
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        vqlib.embed(tiny_vq, torch.full((1, 8, 8), 32))


def test_missing_checkpoint(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        tokenizers.load_vq(tiny_config, tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="config not found"):
        tokenizers.load_vq(tmp_path / "nope.yaml", tmp_path / "nope.ckpt")


def _lightning_ckpt(model, path, **extra):
    sd = {k: v for k, v in model.state_dict().items()}
    sd["loss.discriminator.main.0.weight"] = torch.zeros(
        4, 3, 4, 4
    )  # real taming checkpoints carry their loss
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1000, **extra}, path)


def test_lightning_checkpoint_round_trip(tiny_config, tiny_vq, tmp_path):
    _lightning_ckpt(tiny_vq, tmp_path / "last.ckpt")
    loaded = tokenizers.load_vq(tiny_config, tmp_path / "last.ckpt")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(vqlib.encode(loaded, x), vqlib.encode(tiny_vq, x))
    assert loaded.fingerprint == tiny_vq.fingerprint


def test_pickled_checkpoint_needs_trust_flag(tiny_config, tiny_vq, tmp_path):
    _lightning_ckpt(tiny_vq, tmp_path / "pickled.ckpt", hyper_parameters=argparse.Namespace(lr=1.0))
    with pytest.raises(ValueError, match="trust_pickle=True"):
        tokenizers.load_vq(tiny_config, tmp_path / "pickled.ckpt")
    loaded = tokenizers.load_vq(tiny_config, tmp_path / "pickled.ckpt", trust_pickle=True)
    assert loaded.fingerprint == tiny_vq.fingerprint


def test_config_checkpoint_mismatch_names_keys_and_shapes(tiny_vq, tmp_path):
    from conftest import tiny_vq_config

    _lightning_ckpt(tiny_vq, tmp_path / "last.ckpt")
    with pytest.raises(ValueError) as err:
        tokenizers.load_vq(tiny_vq_config(n_embed=64), tmp_path / "last.ckpt")
    msg = str(err.value)
    assert "quantize.embedding.weight" in msg and "(32, 8)" in msg and "(64, 8)" in msg
    other = tiny_vq_config()
    other["params"]["ddconfig"]["ch_mult"] = [1, 2, 2]
    with pytest.raises(ValueError, match="missing keys"):
        tokenizers.load_vq(other, tmp_path / "last.ckpt")


def test_safetensors_round_trip(tiny_config, tiny_vq, tmp_path):
    from cortex_run.checkpoints import read_card, save_weights

    path = save_weights(tiny_vq.state_dict(), tmp_path / "vq.safetensors", card={"config": tiny_config})
    loaded = tokenizers.load_vq(read_card(path)["config"], path)
    assert loaded.fingerprint == tiny_vq.fingerprint


def test_fingerprint_follows_the_codebook(tiny_vq):
    before = tiny_vq.fingerprint
    with torch.no_grad():
        tiny_vq.model.quantize.embedding.weight[0, 0] += 1e-3
    assert tiny_vq.fingerprint != before


def test_taming_yaml_config_with_lpips_loss_and_ckpt_path_builds_offline(tmp_path, tiny_config):
    cfg = {
        "model": {
            "base_learning_rate": 4.5e-6,
            "target": tiny_config["target"],
            "params": {
                **tiny_config["params"],
                "ckpt_path": "/nonexistent/last.ckpt",
                "lossconfig": IMAGENET_F16_16384_CONFIG["params"]["lossconfig"],
            },
        }
    }
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(cfg))
    model = tokenizers.build_vq(tmp_path / "model.yaml")
    assert vqlib.grid_shape(model) == (8, 8)


def test_imagenet_f16_16384_checkpoint_path(tmp_path):
    """The published ImageNet VQGAN architecture, random weights, saved as a Lightning checkpoint
    beside its YAML config and loaded through the seam (the real weights were not available here)."""
    torch.manual_seed(0)
    model = tokenizers.build_vq(IMAGENET_F16_16384_CONFIG)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "model.yaml").write_text(yaml.safe_dump({"model": IMAGENET_F16_16384_CONFIG}))
    _lightning_ckpt(model, tmp_path / "last.ckpt")
    del model
    vq = tokenizers.load_vq(tmp_path / "configs" / "model.yaml", tmp_path / "last.ckpt")
    meta = vqlib.vq_meta(vq)
    assert (meta["n_embed"], meta["embed_dim"], meta["grid"], meta["image_size"]) == (
        16384,
        256,
        [16, 16],
        256,
    )
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    tokens = vqlib.encode(vq, x)
    assert tokens.shape == (1, 16, 16) and int(tokens.max()) < 16384
    assert vqlib.embed(vq, tokens).shape == (1, 256, 16, 16)
    assert vqlib.decode(vq, tokens).shape == (1, 3, 256, 256)


def test_psnr_and_usage():
    a = torch.zeros(2, 3, 4, 4)
    b = a + 0.2  # error 0.1 on the [0, 1] scale -> 20 dB
    torch.testing.assert_close(vqlib.psnr(a, b), torch.full((2,), 20.0))
    assert list(vqlib.codebook_usage(np.array([[0, 2, 2]]), 4)) == [1, 0, 2, 0]


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_short_training_improves_reconstruction(tiny_config, bf16):
    from cortex_run import digits

    torch.manual_seed(0)
    vq = tokenizers.build_vq(tiny_config, seed=0)
    gray = digits.load_gray_digits()[0][:200, ::2, ::2]  # 16x16 digits
    val = digits.augment_batch(gray[:32], np.random.default_rng(1))
    before = vqlib.reconstruction_report(vq, val)["psnr_db"]
    log = taming_vq.train_vq(
        vq, gray, val, steps=40, batch_size=16, lr=2e-3, revive_every=10, log_every=10, bf16=bf16
    )
    after = vqlib.reconstruction_report(vq, val)["psnr_db"]
    assert after > before + 3, (before, after)
    assert log["revived_total"].iloc[-1] > 0


def test_bf16_setting():
    assert vqlib.use_bf16("on") and not vqlib.use_bf16("off")
    assert isinstance(vqlib.use_bf16("auto"), bool)
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        vqlib.use_bf16("yes")
