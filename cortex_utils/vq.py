"""The tokenizer seam: what CORTEX needs from any VQ model with a codebook (``Tokenizer``), and the batched,
checked calls through which the method uses one (building one by family: ``cortex_run.tokenizers``)."""

from __future__ import annotations

import hashlib
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .devices import device_of
from .progress import tqdm


@runtime_checkable
class Tokenizer(Protocol):
    """What CORTEX needs from a VQ model. Images are ``(N, C, H, W)`` in [-1, 1]; ids ``(N, h, w)`` int64 in
    ``[0, n_embed)``; a token's embedding is its codebook row."""

    family: str
    grid: tuple[int, int]
    n_embed: int
    embed_dim: int
    image_size: int
    image_channels: int
    fingerprint: str  # the codebook's identity (``codebook_fingerprint``)

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...  # images -> ids
    def codebook(self) -> torch.Tensor: ...  # (n_embed, embed_dim)
    def decode(self, ids: torch.Tensor) -> torch.Tensor: ...  # ids -> images
    def decode_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor: ...  # differentiable


METHODS = ("encode", "codebook", "decode", "decode_embeddings")
FACTS = ("family", "grid", "n_embed", "embed_dim", "image_size", "image_channels", "fingerprint")


def check_tokenizer(vq) -> None:
    """Raise a TypeError naming every protocol method or fact that ``vq`` lacks."""
    missing = [f"method {m}()" for m in METHODS if not callable(getattr(vq, m, None))]
    # facts are looked up without being evaluated (a property such as ``fingerprint`` hashes the codebook)
    missing += [
        f"attribute {a}" for a in FACTS if a not in getattr(vq, "__dict__", {}) and not hasattr(type(vq), a)
    ]
    if missing:
        raise TypeError(
            f"{type(vq).__name__} is not a tokenizer: it lacks {', '.join(missing)} "
            "(the protocol: cortex_utils.vq.Tokenizer)"
        )


def resolution(vq) -> int:
    return int(vq.image_size)


def grid_shape(vq) -> tuple[int, int]:
    return tuple(int(s) for s in vq.grid)


def codebook(vq) -> torch.Tensor:
    """The codebook ``(n_embed, embed_dim)`` on the host: a token's embedding is its row."""
    check_tokenizer(vq)
    cb = vq.codebook().detach().cpu()  # data: on the host, as the token grids
    if tuple(cb.shape) != (vq.n_embed, vq.embed_dim):
        raise ValueError(
            f"{type(vq).__name__}.codebook() has shape {tuple(cb.shape)}, its n_embed and embed_dim "
            f"say ({vq.n_embed}, {vq.embed_dim})"
        )
    return cb


def codebook_fingerprint(codebook: torch.Tensor) -> str:
    """Identity of the codebook that token ids refer to: sha256 of its float32 bytes and shape."""
    cb = codebook.float().cpu().contiguous().numpy()
    return hashlib.sha256(cb.tobytes() + str(cb.shape).encode()).hexdigest()[:16]


def vq_meta(vq) -> dict:
    """What a token dataset records about the tokenizer its ids refer to."""
    check_tokenizer(vq)
    return {
        "vq_family": str(vq.family),
        "vq_fingerprint": str(vq.fingerprint),
        "n_embed": int(vq.n_embed),
        "embed_dim": int(vq.embed_dim),
        "grid": list(grid_shape(vq)),
        "image_size": resolution(vq),
        "image_channels": int(vq.image_channels),
    }


def check_images(vq, images: torch.Tensor) -> None:
    want = (int(vq.image_channels), resolution(vq), resolution(vq))
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(
            f"the VQ model expects images of shape (N, {want[0]}, {want[1]}, {want[2]}), "
            f"got {tuple(images.shape)}"
        )
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be float in [-1, 1] (see digits.to_model_input), got {images.dtype}")


def check_ids(vq, ids: torch.Tensor, n: int, what: str = "encode") -> None:
    """Raise a ValueError unless ``ids`` are ``n`` grids of integer ids inside the codebook."""
    name = f"{type(vq).__name__}.{what}"
    if tuple(ids.shape) != (n, *grid_shape(vq)):
        raise ValueError(
            f"{name} returned ids of shape {tuple(ids.shape)}, expected ({n}, {vq.grid[0]}, {vq.grid[1]})"
        )
    if torch.is_floating_point(ids) or ids.dtype == torch.bool:
        raise ValueError(f"{name} returned {ids.dtype} values, expected integer codebook ids")
    if ids.numel() and (ids.min() < 0 or ids.max() >= vq.n_embed):
        raise ValueError(
            f"{name} returned ids outside its codebook [0, {vq.n_embed}): "
            f"got [{int(ids.min())}, {int(ids.max())}]"
        )


@torch.no_grad()
def encode(vq, images: torch.Tensor, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Images in [-1, 1] ``(N, C, H, W)`` -> token grids ``(N, h, w)`` (int64 codebook ids)."""
    check_tokenizer(vq)
    check_images(vq, images)
    out, device = [], device_of(vq)
    for i in tqdm(range(0, len(images), batch_size), desc="encode", disable=not progress):
        batch = images[i : i + batch_size]
        ids = vq.encode(batch.to(device))
        check_ids(vq, ids, len(batch))
        out.append(ids.long().to(images.device))
    return torch.cat(out) if out else torch.empty(0, *grid_shape(vq), dtype=torch.long)


def embed(vq_or_codebook, tokens: torch.Tensor) -> torch.Tensor:
    """Token grids ``(N, h, w)`` -> embeddings ``(N, embed_dim, h, w)`` = ``codebook[tokens]``."""
    cb = vq_or_codebook if isinstance(vq_or_codebook, torch.Tensor) else codebook(vq_or_codebook)
    tokens = check_token_grids(tokens, len(cb))
    return cb[tokens].permute(0, 3, 1, 2).contiguous()


def check_token_grids(tokens, n_embed: int) -> torch.Tensor:
    """``tokens`` as int64 ``(N, h, w)``; a ValueError unless every id lies in ``[0, n_embed)``."""
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 3:
        raise ValueError(f"token grids must have shape (N, h, w), got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= n_embed):
        raise ValueError(
            f"token ids must lie in [0, {n_embed}), got [{int(tokens.min())}, {int(tokens.max())}]"
        )
    return tokens


def decode(
    vq, tokens_or_embeddings: torch.Tensor, batch_size: int = 64, grad: bool = False, progress: bool = False
) -> torch.Tensor:
    """Token grids ``(N, h, w)`` or embeddings ``(N, D, h, w)`` (not necessarily codebook rows) -> images in
    [-1, 1]; ``grad=True`` keeps the graph."""
    check_tokenizer(vq)
    x, (h, w) = tokens_or_embeddings, grid_shape(vq)
    if torch.is_floating_point(x):
        if x.ndim != 4 or x.shape[1] != vq.embed_dim or tuple(x.shape[2:]) != (h, w):
            raise ValueError(f"expected embeddings (N, {vq.embed_dim}, {h}, {w}), got {tuple(x.shape)}")
        step = vq.decode_embeddings
    else:
        x = check_token_grids(x, vq.n_embed)
        if tuple(x.shape[1:]) != (h, w):
            raise ValueError(f"expected token grids (N, {h}, {w}), got {tuple(x.shape)}")
        step = vq.decode
    device = device_of(vq)  # batches decoded there, images back on the device of the input
    with torch.set_grad_enabled(grad):
        parts = [
            step(x[i : i + batch_size].to(device)).clamp(-1, 1).to(x.device)
            for i in tqdm(range(0, len(x), batch_size), desc="decode", disable=not progress)
        ]
    return torch.cat(parts)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between images in [-1, 1] (peak = full range)."""
    mse = ((a - b) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def codebook_usage(tokens: torch.Tensor, n_embed: int) -> np.ndarray:
    """How often each codebook entry occurs in ``tokens`` (array of length n_embed)."""
    return np.bincount(np.asarray(tokens).ravel(), minlength=n_embed)


@torch.no_grad()
def reconstruction_report(vq, images: torch.Tensor) -> dict:
    """Test-set figures: mean PSNR (dB) and the fraction of codebook entries used."""
    tokens = encode(vq, images)
    rec = decode(vq, tokens)
    counts = codebook_usage(tokens, vq.n_embed)
    return {
        "psnr_db": float(psnr(rec, images).mean()),
        "codebook_usage": float((counts > 0).mean()),
        "tokens": tokens,
        "reconstructions": rec,
        "counts": counts,
    }


def use_bf16(setting: str = "auto") -> bool:
    """Train in bfloat16 autocast? ``"on"``, ``"off"``, or ``"auto"``: on when the CPU has AMX tiles (as the
    reference machine: ~1.7x faster training steps), off elsewhere (emulated bfloat16 is slower)."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {setting!r}")
    if setting == "auto":
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return setting == "on"
