import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import IMAGENET_F16_16384_CONFIG

from cortex_run import generation as gen
from cortex_run import taming_vq, tokenizers
from cortex_run.checkpoints import save_weights
from cortex_utils import vq as vqlib


@pytest.fixture
def tiny_tf(tiny_config, tiny_vq):
    cfg = gen.transformer_config(tiny_config, n_classes=3, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return gen.build_transformer(cfg, vq=tiny_vq, seed=0), cfg


def _greedy_reference(tf, labels, steps):
    """Plain greedy decoding that re-runs the whole prefix every step (no cache)."""
    x = torch.as_tensor(labels)[:, None]
    for _ in range(steps):
        logits, _ = tf.transformer(x)
        x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return x[:, 1:]


def test_cached_sampling_equals_full_recomputation(tiny_tf):
    tf, _ = tiny_tf
    with torch.no_grad():  # make the untrained model's predictions depend on the prefix
        for p in tf.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    labels = np.array([0, 1, 2, 1])
    greedy = gen.sample_tokens(tf, labels, top_k=1, progress=False)
    assert greedy.shape == (4, 8, 8)
    assert torch.equal(greedy.flatten(1), _greedy_reference(tf, labels, 64))
    assert greedy.flatten(1).unique(dim=0).shape[0] > 1  # the condition changes the sample


def test_sampling_is_seeded_and_in_range(tiny_tf):
    tf, _ = tiny_tf
    a = gen.sample_tokens(tf, [0, 1, 2], top_k=5, seed=3, progress=False)
    b = gen.sample_tokens(tf, [0, 1, 2], top_k=5, seed=3, progress=False)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 32


def test_inverse_cdf_draws_follow_the_probabilities():
    probs = torch.tensor([[0.0, 0.5, 0.2, 0.0, 0.3]]).repeat(20000, 1)
    x = gen.draw(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(x.ravel(), minlength=5).double() / len(x)
    assert freq[0] == 0 and freq[3] == 0  # a token of probability 0 is never drawn
    assert torch.allclose(freq, probs[0].double(), atol=0.015)
    # unnormalised rows (top-k masks) and the seed: same generator state, same draws
    again = gen.draw(probs * 7, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_samples_do_not_depend_on_the_thread_count(tiny_tf):
    tf, _ = tiny_tf
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gen.sample_tokens(tf, [0, 1, 2, 0], seed=5, top_k=None, progress=False)
        torch.set_num_threads(2)
        two = gen.sample_tokens(tf, [0, 1, 2, 0], seed=5, top_k=None, progress=False)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_training_lowers_the_loss_and_checkpoint_round_trip(tiny_tf, tiny_vq, tmp_path):
    tf, cfg = tiny_tf
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    tokens = labels[:, None, None] * 10 + rng.integers(0, 2, (60, 8, 8))  # class-dependent tokens
    log = gen.train_transformer(
        tf,
        tokens,
        labels,
        steps=60,
        batch_size=16,
        lr=3e-3,
        log_every=10,
        warmup=5,
        val=(tokens[:12], labels[:12]),
    )
    assert log["val_loss"].iloc[-1] < log["val_loss"].iloc[0] - 1.0
    path = save_weights(gen.transformer_state_for_saving(tf), tmp_path / "tf.safetensors", card={})
    again = gen.load_transformer(cfg, path, vq=tiny_vq)
    s1 = gen.sample_tokens(tf, labels[:6], seed=1, progress=False)
    assert torch.equal(s1, gen.sample_tokens(again, labels[:6], seed=1, progress=False))
    # the condition steers the samples: class 2's grids hold far more of class 2's tokens than class 0's do
    share = [(s1[labels[:6] == c] >= 20).float().mean().item() for c in (0, 2)]
    assert share[1] > share[0] + 0.2, share
    shallower = gen.transformer_config(
        cfg["params"]["first_stage_config"], n_classes=3, n_layer=1, n_head=2, n_embd=32
    )
    with pytest.raises(ValueError, match="unexpected keys"):
        gen.load_transformer(shallower, path, vq=tiny_vq)


def test_too_many_classes_for_the_vocabulary(tiny_config):
    with pytest.raises(ValueError, match="do not fit"):
        gen.transformer_config(tiny_config, n_classes=33)


def test_cin_transformer_layout_lightning_checkpoint(tmp_path):
    """taming's ImageNet cin_transformer layout (VQGAN f16-16384 first stage, Labelator over 1000 classes,
    vocabulary 16384, 256 positions), with a 1-layer GPT so the test stays small. Random weights:
    the real checkpoint was not available here."""
    cfg = gen.transformer_config(IMAGENET_F16_16384_CONFIG, n_classes=1000, n_layer=1, n_head=2, n_embd=32)
    cfg["params"]["first_stage_config"]["params"]["ckpt_path"] = (
        "logs/vqgan_imagenet_f16_16384/checkpoints/last.ckpt"
    )
    model = gen.build_transformer(cfg, seed=0)
    with torch.device("meta"):  # taming's own Net2NetTransformer has the same keys and shapes
        theirs = _tamings_net2net(cfg, seed=0)
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    torch.save({"state_dict": model.state_dict(), "epoch": 1}, tmp_path / "last.ckpt")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": cfg}))
    del model
    tf = gen.load_transformer(tmp_path / "model.yaml", tmp_path / "last.ckpt")
    assert vqlib.grid_shape(tf.tokenizer) == (16, 16)
    tokens = gen.sample_tokens(tf, [0, 999], top_k=100, progress=False)
    assert tokens.shape == (2, 16, 16) and int(tokens.max()) < 16384
    # the same checkpoint with the tokenizer given separately: its codebook must match
    vq = tf.tokenizer
    again = gen.load_transformer(tmp_path / "model.yaml", tmp_path / "last.ckpt", vq=vq)
    assert again.tokenizer is vq and again.first_stage_model is vq.model
    other = tokenizers.build_vq(IMAGENET_F16_16384_CONFIG, seed=1)
    with pytest.raises(ValueError, match="another codebook"):
        gen.load_transformer(tmp_path / "model.yaml", tmp_path / "last.ckpt", vq=other)


def test_import_does_not_load_lightning():
    """Kernel start-up: generation uses taming's plain torch modules only (taming.models.* import
    Lightning)."""
    code = (
        "import sys, cortex_run.generation as g, cortex_run.taming_vq as v; "
        "g.build_transformer(g.transformer_config(v.DEFAULT_VQ_CONFIG, 10, n_layer=1), seed=0); "
        "print(sorted(m for m in ('pytorch_lightning', 'lightning_fabric', 'torchmetrics', 'taming.main') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def _tamings_net2net(cfg, seed):
    """taming's own Lightning ``Net2NetTransformer`` for ``cfg`` (the loss swapped for DummyLoss, offline)."""
    params = {**cfg["params"], "first_stage_config": {**cfg["params"]["first_stage_config"]}}
    params["first_stage_config"]["params"] = {
        **params["first_stage_config"]["params"],
        "lossconfig": taming_vq.DUMMY_LOSS,
    }
    params["first_stage_config"]["params"].pop("ckpt_path", None)
    torch.manual_seed(seed)
    return taming_vq.instantiate({"target": cfg["target"], "params": params}).eval()


def test_same_weights_keys_and_objective_as_tamings_net2net(tiny_config):
    """``CondTransformer`` is taming's ``Net2NetTransformer`` without Lightning: from the same seed, the same
    state dict (keys, shapes, values) and the same ``forward(x, c)``; our training loss on precomputed
    tokens is that objective."""
    from taming.models.cond_transformer import Net2NetTransformer

    cfg = gen.transformer_config(tiny_config, n_classes=3, n_layer=2, n_head=2, n_embd=32)
    ours = gen.build_transformer(cfg, seed=0)
    theirs = _tamings_net2net(cfg, seed=0)
    assert isinstance(theirs, Net2NetTransformer) and not isinstance(ours, Net2NetTransformer)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():  # make the untrained model's predictions depend on the prefix
        for p in ours.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    c = torch.tensor([1, 2])
    logits, target = ours(x, c)
    ref_logits, ref_target = theirs(x, c)
    assert torch.equal(logits, ref_logits) and torch.equal(target, ref_target)
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    z = vqlib.encode(ours.tokenizer, x).flatten(1)
    torch.testing.assert_close(gen.sequence_loss(ours.transformer, c[:, None], z), ref)
    assert ours.cond_stage_model.n_classes == 3 and ours.sos_token == theirs.sos_token
    ours.train()  # as taming: the first and condition stages stay in eval mode
    assert ours.transformer.training and not ours.first_stage_model.training
    with pytest.raises(ValueError, match="Net2NetTransformer"):
        gen.build_transformer({**cfg, "target": "torch.nn.Identity"})


def test_bf16_training_lowers_the_loss(tiny_tf):
    tf, _ = tiny_tf
    labels = np.arange(48) % 3
    tokens = labels[:, None, None] * 10 + np.random.default_rng(1).integers(0, 2, (48, 8, 8))
    log = gen.train_transformer(
        tf,
        tokens,
        labels,
        steps=40,
        batch_size=16,
        lr=3e-3,
        log_every=10,
        warmup=5,
        val=(tokens[:12], labels[:12]),
        bf16=True,
    )
    assert np.isfinite(log["val_loss"]).all() and log["val_loss"].iloc[-1] < log["val_loss"].iloc[0] - 1.0


def _guided_reference(tf, labels, rivals, scale, temperature, top_k, seed):
    """Classifier-free guidance against the rivals' posterior mixture, the slow obvious way: every step
    re-runs every rival's whole prefix, and the posterior is recomputed from the full sequence."""
    gpt, g = tf.transformer, torch.Generator().manual_seed(seed)
    rivals = torch.as_tensor(rivals).long()
    own = [list(r).index(int(c)) for r, c in zip(rivals.tolist(), labels, strict=True)]
    seq = torch.zeros(len(labels), 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(64):
            logp = []  # (n, R, steps so far + 1, vocab): every rival's log-probabilities along the sequence
            for j in range(rivals.shape[1]):
                logits = gpt(torch.cat([rivals[:, j : j + 1], seq], 1))[0]
                logp.append(torch.log_softmax(logits.double(), -1))
            logp = torch.stack(logp, 1)
            drawn = seq[:, None, :, None].expand(-1, logp.shape[1], -1, 1)
            loglik = logp[:, :, :-1].gather(3, drawn).squeeze(3).sum(2)  # log p_r(tokens so far)
            weights = torch.softmax(loglik, 1)
            now = logp[:, :, -1]
            mixture = torch.log((weights[:, :, None] * now.exp()).sum(1))
            mine = now[torch.arange(len(labels)), own]
            z = (mine + scale * (mine - mixture)) / temperature
            if top_k:
                kth = torch.topk(z, top_k).values[:, -1:]
                z = z.masked_fill(z < kth, -float("inf"))
            seq = torch.cat([seq, gen.draw(torch.softmax(z, -1), g)], 1)
    return seq.reshape(-1, 8, 8)


@pytest.mark.parametrize("scale,top_k", [(1.0, None), (2.0, 5)])
def test_guided_sampling_equals_the_slow_reference(tiny_tf, scale, top_k, one_thread):
    tf, _ = tiny_tf
    with torch.no_grad():
        for p in tf.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    labels, rivals = np.array([0, 1, 2, 1]), np.array([[0, 1, 2], [0, 1, 2], [2, 0, 1], [1, 2, 0]])
    got = gen.sample_guided(tf, labels, rivals, scale, 0.8, top_k, seed=4)
    want = _guided_reference(tf, labels, rivals, scale, 0.8, top_k, seed=4)
    assert torch.equal(got, want)
    # guidance 0, or a row whose only rival is its own prompt, samples the prompt as sample_tokens does
    plain = gen.sample_tokens(tf, labels, 0.8, top_k=top_k, seed=4, progress=False)
    assert torch.equal(gen.sample_guided(tf, labels, rivals, 0.0, 0.8, top_k, seed=4), plain)
    assert torch.equal(gen.sample_guided(tf, labels, labels[:, None], scale, 0.8, top_k, seed=4), plain)
    assert not torch.equal(got, plain)  # the guidance changes the samples
    with pytest.raises(ValueError, match="must be one of its rivals"):
        gen.sample_guided(tf, labels, np.array([[1, 2]] * 4), scale, 0.8, top_k)


def test_guidance_makes_the_prompt_easier_to_tell_from_its_rivals(tiny_tf, one_thread):
    """The point of guidance: the generated sequences become likelier under their own prompt relative to the
    rivals (the transformer's own classifier reads them as the prompted class more often)."""
    tf, _ = tiny_tf
    with torch.no_grad():
        for p in tf.transformer.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    labels = np.repeat([0, 1, 2], 40)
    rivals = np.tile([0, 1, 2], (len(labels), 1))

    def read_as_prompted(z):
        x = torch.as_tensor(z).flatten(1)
        ll = []
        for c in range(3):
            logits = tf.transformer(torch.cat([torch.full((len(x), 1), c), x[:, :-1]], 1))[0]
            ll.append(torch.log_softmax(logits, -1).gather(2, x[:, :, None]).squeeze(2).sum(1))
        return (torch.stack(ll, 1).argmax(1).numpy() == labels).mean()

    with torch.no_grad():
        plain = read_as_prompted(gen.sample_guided(tf, labels, rivals, 0.0, 1.0, None, seed=1))
        guided = read_as_prompted(gen.sample_guided(tf, labels, rivals, 2.0, 1.0, None, seed=1))
    assert guided > plain + 0.1, (plain, guided)
