"""The second tokenizer family: a small VQ-VAE with finite scalar quantization (FSQ, Mentzer et al. 2023,
``vector-quantize-pytorch``), plain PyTorch, no taming.

FSQ has no learned codebook: each grid position is projected to ``len(levels)`` numbers, each rounded to
one of ``levels[i]`` values; the tuple is the token (levels ``[8, 6, 5]``: 240 lattice points, the id its
index). No codebook or commitment loss, no dead codes. For CORTEX the codebook is what the decoder reads
per id, ``project_out(lattice)`` ``(240, 32)``, so its fingerprint tells two trained models apart.
``FSQVAE`` implements the tokenizer protocol of ``cortex_utils.vq``; images are float ``(N, C, H, W)`` in
[-1, 1].
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from cortex_utils.progress import tqdm
from cortex_utils.vq import codebook_fingerprint, psnr, reconstruction_report

from . import digits
from .checkpoints import check_state_dict, load_state_dict

FAMILY = "vqvae_fsq"
# The embedded second family: 3x32x32 digits -> 8x8 grid of 240 FSQ tokens (levels 8, 6, 5: the FSQ paper's
# choice for a ~2^8 codebook), decoder width 32 (= embed_dim, as the taming default's codebook vectors).
DEFAULT_CONFIG = {
    "family": FAMILY,
    "levels": [8, 6, 5],
    "image_size": 32,
    "in_channels": 3,
    "ch": 32,
    "z_channels": 32,
    "downsamples": 2,
}


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(8, ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.GroupNorm(8, ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
        )

    def forward(self, x):
        return x + self.body(x)


class FSQVAE(nn.Module):
    """Encoder (a conv, then per halving a stride-2 conv to ``2 * ch`` channels and a residual block), FSQ,
    decoder (the mirror image, transposed convs). 2 ``downsamples``: 32 px -> 8x8 grid."""

    family = FAMILY

    def __init__(
        self,
        levels=(8, 6, 5),
        image_size: int = 32,
        in_channels: int = 3,
        ch: int = 32,
        z_channels: int = 32,
        downsamples: int = 2,
        family: str = FAMILY,
    ):
        super().__init__()
        if family != FAMILY:
            raise ValueError(f"config family {family!r} is not {FAMILY!r}")
        if image_size % 2**downsamples:
            raise ValueError(f"image_size {image_size} is not divisible by 2^{downsamples}")
        self.config = {
            "family": FAMILY,
            "levels": list(levels),
            "image_size": image_size,
            "in_channels": in_channels,
            "ch": ch,
            "z_channels": z_channels,
            "downsamples": downsamples,
        }
        wide = 2 * ch
        enc = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        for i in range(downsamples):
            enc += [nn.Conv2d(ch if i == 0 else wide, wide, 4, stride=2, padding=1), ResBlock(wide)]
        enc += [nn.GroupNorm(8, wide), nn.SiLU(), nn.Conv2d(wide, z_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        from vector_quantize_pytorch import FSQ  # deferred: a second to import, only for this family

        self.quantize = FSQ(levels=list(levels), dim=z_channels)
        dec = [nn.Conv2d(z_channels, wide, 3, padding=1)]
        for i in range(downsamples):
            dec += [
                ResBlock(wide),
                nn.ConvTranspose2d(wide, ch if i == downsamples - 1 else wide, 4, stride=2, padding=1),
            ]
        dec += [nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        # the tokenizer protocol's facts
        side = image_size // 2**downsamples
        self.grid, self.n_embed, self.embed_dim = (side, side), int(np.prod(levels)), z_channels
        self.image_size, self.image_channels = image_size, in_channels

    @property
    def fingerprint(self) -> str:
        return codebook_fingerprint(self.codebook())

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` -> ids ``(N, h, w)`` int64."""
        _, ids = self.quantize(self.encoder(images))
        return ids.long()

    def codebook(self) -> torch.Tensor:
        """``(n_embed, embed_dim)``: ``project_out`` of every lattice point, in id order."""
        with torch.no_grad():
            return self.quantize.project_out(self.quantize.implicit_codebook).detach()

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode_embeddings(self.codebook()[ids].permute(0, 3, 1, 2))

    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.decoder(embeddings)


def build(config: dict | None = None, seed: int | None = None) -> FSQVAE:
    """A randomly initialised ``FSQVAE`` (eval mode) from a config like ``DEFAULT_CONFIG``."""
    if seed is not None:
        torch.manual_seed(seed)
    return FSQVAE(**(config or DEFAULT_CONFIG)).eval()


def load(config: dict, checkpoint, trust_pickle: bool = False) -> FSQVAE:
    """Build the model of ``config`` and load its weights (a mismatch names the first keys)."""
    model = build(config)
    state = load_state_dict(checkpoint, trust_pickle=trust_pickle)
    model.load_state_dict(check_state_dict(model, state, what=f"checkpoint {checkpoint}"))
    return model.eval()


def train_vqvae(
    model: FSQVAE,
    train_gray: np.ndarray,
    val_images: torch.Tensor,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    log_every: int = 50,
    bf16: bool = False,
) -> pd.DataFrame:
    """Train on digits in fresh colours each batch: L1 + L2 reconstruction only. Adam, cosine learning rate.
    ``bf16``: encoder and decoder in bfloat16 autocast, the quantizer in float32. Returns the log."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.05)
    log = []
    model.train()
    bar = tqdm(range(steps), desc="train VQ-VAE (FSQ)")
    for step in bar:
        x = digits.augment_batch(train_gray[rng.integers(0, len(train_gray), batch_size)], rng)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            z = model.encoder(x).float()
        zq, ids = model.quantize(z)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            rec = model.decoder(zq).float()
        l1, l2 = (rec - x).abs().mean(), (rec - x).pow(2).mean()
        loss = l1 + l2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            row = {
                "step": step,
                "loss": loss.item(),
                "l1": l1.item(),
                "train_psnr_db": psnr(rec.detach(), x).mean().item(),
                "batch_codes_used": int(ids.unique().numel()),
            }
            if step % (log_every * 4) == 0 or step == steps - 1:
                model.eval()
                row["val_psnr_db"] = reconstruction_report(model, val_images)["psnr_db"]
                model.train()
            log.append(row)
            bar.set_postfix(psnr=f"{row['train_psnr_db']:.1f}")
    model.eval()
    return pd.DataFrame(log)
