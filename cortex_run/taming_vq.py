"""The first tokenizer family: taming-transformers' VQGAN behind the tokenizer protocol of
``cortex_utils.vq``, and the only module that imports ``taming`` (a test checks it; ``generation`` builds
its taming classes through ``instantiate``). ``TamingVQ`` is taming's ``VQModel`` in a plain
``torch.nn.Module``: ``taming.models.*`` are Lightning modules (pytorch_lightning, torchmetrics, scipy:
seconds at every kernel start) that inference and our training do not need. ``TamingTokenizer`` wraps it
(or any taming ``VQModel``) in the protocol."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2

from cortex_utils.progress import tqdm
from cortex_utils.vq import codebook_fingerprint, psnr, reconstruction_report

from . import digits
from .checkpoints import check_state_dict, load_state_dict

FAMILY = "taming_vqgan"


@contextlib.contextmanager
def _transformers_stand_in():
    """taming's minGPT imports ``top_k_top_p_filtering`` from ``transformers`` (removed there, and the package
    is not needed otherwise); a stand-in is offered only while the block runs."""
    fake = None
    try:
        from transformers import top_k_top_p_filtering  # noqa: F401  (deferred: a probe for the old function)
    except ImportError:
        if "transformers" not in sys.modules:
            fake = types.ModuleType("transformers")
            fake.top_k_top_p_filtering = _top_k_filter
            sys.modules["transformers"] = fake
    try:
        yield
    finally:
        if fake is not None and sys.modules.get("transformers") is fake:
            del sys.modules["transformers"]


def _import_taming():
    """Import taming's Lightning models (``taming.models.*``) with two shims: Lightning 2 moved
    ``rank_zero_only`` out of ``pytorch_lightning.utilities.distributed``, and ``transformers`` dropped
    ``top_k_top_p_filtering`` (``_transformers_stand_in``)."""
    import pytorch_lightning.utilities as plu  # deferred: Lightning only for a config that names its classes

    name = "pytorch_lightning.utilities.distributed"
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except ImportError:
            shim = types.ModuleType(name)
            shim.rank_zero_only = plu.rank_zero_only
            sys.modules[name] = shim
    with _transformers_stand_in():  # deferred: taming's models import only after the two shims
        import taming.models.cond_transformer  # noqa: F401
        import taming.models.vqgan  # noqa: F401  (deferred, as above)
        import taming.modules.transformer.mingpt  # noqa: F401  (deferred, as above)


def _top_k_filter(logits, top_k=0, top_p=1.0, filter_value=-float("inf"), **_):
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, filter_value)
    return logits


def instantiate(config: dict):
    """``target(**params)`` of a config ``{"target": "module.Class", "params": {...}}``, as taming's
    ``instantiate_from_config`` but importing only the target's module (Lightning only for
    ``taming.models.*`` and ``taming.main``)."""
    module, name = config["target"].rsplit(".", 1)
    if module == "taming.main" or module.startswith("taming.models"):
        _import_taming()
    if module in sys.modules:
        obj = getattr(sys.modules[module], name)
    else:
        with _transformers_stand_in():
            obj = getattr(importlib.import_module(module), name)
    with contextlib.redirect_stdout(io.StringIO()):  # taming's constructors print their shapes
        return obj(**config.get("params", {}))


VQMODEL_TARGET = "taming.models.vqgan.VQModel"


class TamingVQ(torch.nn.Module):
    """taming's ``VQModel`` without Lightning: the same submodules, names and build order (a seed gives the
    same weights; taming's ``.ckpt`` and our safetensors load unchanged). Of its parameters, ``lossconfig``,
    ``ckpt_path``, ``ignore_keys``, ``image_key`` and ``monitor`` concern only Lightning training: ignored."""

    def __init__(
        self,
        ddconfig,
        n_embed,
        embed_dim,
        lossconfig=None,
        ckpt_path=None,
        ignore_keys=(),
        image_key="image",
        colorize_nlabels=None,
        monitor=None,
        remap=None,
        sane_index_shape=False,
    ):
        super().__init__()
        self.encoder = Encoder(**ddconfig)
        with contextlib.redirect_stdout(io.StringIO()):  # taming prints "Working with z of shape ..."
            self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer2(
            n_embed, embed_dim, beta=0.25, remap=remap, sane_index_shape=sane_index_shape
        )
        self.quant_conv = torch.nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        if colorize_nlabels is not None:
            self.register_buffer("colorize", torch.randn(3, colorize_nlabels, 1, 1))

    def encode(self, x):
        """``VQModel.encode``: images -> ``(quantized, codebook loss, (_, _, indices))``."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant):
        return self.decoder(self.post_quant_conv(quant))

    def forward(self, x):
        quant, diff, _ = self.encode(x)
        return self.decode(quant), diff


DUMMY_LOSS = {"target": "taming.modules.losses.vqperceptual.DummyLoss"}

# The embedded default: 3x32x32 digits -> 8x8 grid of 256 codes of dimension 32.
DEFAULT_VQ_CONFIG = {
    "target": VQMODEL_TARGET,
    "params": {
        "embed_dim": 32,
        "n_embed": 256,
        "ddconfig": {
            "double_z": False,
            "z_channels": 64,
            "resolution": 32,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "lossconfig": DUMMY_LOSS,
    },
}

# The published ImageNet VQGAN f16-16384 (taming's vqgan_imagenet_f16_16384 model.yaml): 3x256x256 images ->
# 16x16 grid of 16,384 codes of dimension 256, the paper's tokenizer (notebook 18 builds it with random
# weights; its training loss is never built: ``build`` swaps in DUMMY_LOSS).
IMAGENET_F16_16384_CONFIG = {
    "target": VQMODEL_TARGET,
    "params": {
        "embed_dim": 256,
        "n_embed": 16384,
        "ddconfig": {
            "double_z": False,
            "z_channels": 256,
            "resolution": 256,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 128,
            "ch_mult": [1, 1, 2, 2, 4],
            "num_res_blocks": 2,
            "attn_resolutions": [16],
            "dropout": 0.0,
        },
        "lossconfig": {
            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {
                "disc_conditional": False,
                "disc_in_channels": 3,
                "disc_start": 0,
                "disc_weight": 0.75,
                "codebook_weight": 1.0,
            },
        },
    },
}


def read_config(config: str | Path | dict) -> dict:
    """A taming model config (a dict or a YAML path, optionally under ``model:``) as a plain dict
    ``{"target": ..., "params": ...}``."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.exists():
            raise FileNotFoundError(f"config not found: {path}")
        config = yaml.safe_load(path.read_text())
    config = copy.deepcopy(dict(config))
    if "model" in config and "target" not in config:
        config = config["model"]
    if "target" not in config or "params" not in config:
        raise ValueError("a taming config needs 'target' and 'params' (optionally under 'model:')")
    return config


class TamingTokenizer:
    """A taming VQ model behind the tokenizer protocol (``vq.Tokenizer``); ``model`` is the module."""

    family = FAMILY

    def __init__(self, model: torch.nn.Module, config: dict):
        self.model, self.cortex_config = model.eval(), config
        dd = config["params"]["ddconfig"]
        self.image_size, self.image_channels = int(dd["resolution"]), int(dd["in_channels"])
        side = dd["resolution"] // 2 ** (len(dd["ch_mult"]) - 1)
        self.grid = (side, side)
        self.n_embed, self.embed_dim = int(model.quantize.n_e), int(model.quantize.e_dim)

    @property
    def fingerprint(self) -> str:
        return codebook_fingerprint(self.codebook())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``VQModel.encode``'s indices, as a grid ``(N, h, w)``."""
        _, _, (_, _, idx) = self.model.quantize(self.model.quant_conv(self.model.encoder(images)))
        return idx.reshape(-1, *self.grid)

    def codebook(self) -> torch.Tensor:
        return self.model.quantize.embedding.weight.detach()

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode_embeddings(self.codebook()[ids].permute(0, 3, 1, 2).contiguous())

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.model.decode(embeddings)

    def to(self, device) -> TamingTokenizer:
        """The module moved to ``device`` (in place, as ``nn.Module.to``); returns the tokenizer."""
        self.model.to(device)
        return self

    def parameters(self):  # where the weights are: cortex_utils.devices.device_of
        return self.model.parameters()

    def buffers(self):
        return self.model.buffers()

    def state_dict(self) -> dict:
        """The tokenizer's weights, without a checkpoint's training loss (``loss.*``)."""
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("loss.")}


def build(config: str | Path | dict = DEFAULT_VQ_CONFIG, seed: int | None = None) -> TamingTokenizer:
    """A randomly initialised tokenizer (eval mode) from a taming config: a ``TamingVQ`` for ``VQModel``;
    another ``VQModel`` subclass (``GumbelVQ``, ...) is built by taming itself (imports Lightning)."""
    config = read_config(config)
    params = copy.deepcopy(config["params"])
    params["lossconfig"] = DUMMY_LOSS  # the training loss's LPIPS would fetch VGG weights
    params.pop("ckpt_path", None)  # taming would unpickle it without weights_only
    if seed is not None:
        torch.manual_seed(seed)
    if config["target"] == VQMODEL_TARGET:
        model = TamingVQ(**params)
    else:
        model = instantiate({**config, "params": params})  # a taming.models target: imports Lightning
        from taming.models.vqgan import VQModel  # deferred: a Lightning class (see _import_taming)

        if not isinstance(model, VQModel):
            raise ValueError(f"config target {config['target']} is not a taming VQModel")
    return TamingTokenizer(model, config)


def load(config: str | Path | dict, checkpoint: str | Path, trust_pickle: bool = False) -> TamingTokenizer:
    """Build the tokenizer of ``config`` and load weights from a Lightning ``.ckpt`` or our safetensors,
    skipping the training loss's (``loss.*``)."""
    tok = build(config)
    state = load_state_dict(checkpoint, trust_pickle=trust_pickle)
    tok.model.load_state_dict(check_state_dict(tok.model, state, what=f"checkpoint {checkpoint}"))
    return tok


def train_vq(
    tok: TamingTokenizer,
    train_gray: np.ndarray,
    val_images: torch.Tensor,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    revive_every: int = 50,
    log_every: int = 50,
    discriminator_weight: float = 0.0,
    bf16: bool = False,
) -> pd.DataFrame:
    """Train a taming VQModel on digits in fresh colours each batch -> the training log: L1 + L2
    reconstruction + taming's codebook/commitment loss (no LPIPS: no VGG weights here), optionally taming's
    patch discriminator (hinge loss). Every ``revive_every`` steps (until 80 % of training) codes unused since
    the last check move onto encoder outputs of the batch, drawn in proportion to their squared distance from
    the codebook. ``bf16``: encoder and decoder in bfloat16 autocast, quantizer and losses in float32."""
    vq = tok.model
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for n, p in vq.named_parameters() if not n.startswith("loss.")]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    disc = disc_opt = None
    if discriminator_weight > 0:
        # deferred: the GAN loss's modules, needed only when a discriminator is trained
        from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
        from taming.modules.losses.vqperceptual import hinge_d_loss  # deferred, as above

        disc = NLayerDiscriminator(input_nc=3, n_layers=2, ndf=32).apply(weights_init)
        disc_opt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
    used = torch.zeros(vq.quantize.n_e, dtype=torch.bool)
    log, revived = [], 0
    vq.train()
    bar = tqdm(range(steps), desc="train VQ")
    for step in bar:
        x = digits.augment_batch(train_gray[rng.integers(0, len(train_gray), batch_size)], rng)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            z = vq.quant_conv(vq.encoder(x)).float()
        zq, qloss, (_, _, idx) = vq.quantize(z)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            rec = vq.decode(zq).float()
        l1 = (rec - x).abs().mean()
        loss = l1 + (rec - x).pow(2).mean() + qloss
        if disc is not None:
            loss = loss - discriminator_weight * disc(rec).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if disc is not None:
            d_loss = hinge_d_loss(disc(x), disc(rec.detach()))
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
        used[idx.flatten()] = True
        if revive_every and (step + 1) % revive_every == 0 and step + 1 < 0.8 * steps:
            dead = (~used).nonzero().flatten()
            if len(dead):
                flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                # move dead codes where the codebook fits worst (k-means++-like), not onto the background
                # that most positions show and that live codes already represent well
                err = torch.cdist(flat, vq.quantize.embedding.weight.detach()).min(1).values.pow(2)
                pick = torch.multinomial(
                    err + 1e-12, len(dead), replacement=len(dead) > len(flat), generator=gen
                )
                with torch.no_grad():
                    vq.quantize.embedding.weight[dead] = flat[pick] + 0.01 * torch.randn_like(flat[pick])
                revived += len(dead)
            used.zero_()
        if step % log_every == 0 or step == steps - 1:
            row = {"step": step, "loss": loss.item(), "l1": l1.item(), "qloss": qloss.item()}
            row.update(train_psnr_db=psnr(rec.detach(), x).mean().item(), revived_total=revived)
            if step % (log_every * 4) == 0 or step == steps - 1:
                vq.eval()
                row["val_psnr_db"] = reconstruction_report(tok, val_images)["psnr_db"]
                vq.train()
            log.append(row)
            bar.set_postfix(psnr=f"{row['train_psnr_db']:.1f}")
    vq.eval()
    return pd.DataFrame(log)
