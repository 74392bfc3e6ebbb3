"""The information extractor model (IEM): a classifier on token-embedding grids ``(N, D, h, w)``.

The paper's four architectures, parameterized by input channels (the codebook's embed_dim), grid size,
number of classes and width (the original hard-codes 256 x 16 x 16, 1000 classes and 512 channels):

1. ``vgg``: 4 conv-BN-ReLU, max-pool, 4 more, max-pool, three FC layers with BN and dropout;
2. ``vgg_deep``: the same with two more conv layers after the second pool;
3. ``resnet_se``: residual blocks with squeeze-excitation, two stages of three blocks, global pooling, FC
   head;
4. ``vit``: linear projection of each token embedding, CLS token, learned positions, pre-LN encoder layers
   (BatchNorm on the attention and MLP outputs, as the original), MLP head on CLS.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from cortex_run.artifacts import registered
from cortex_run.checkpoints import check_state_dict, load_state_dict, read_card, save_weights

from .progress import tqdm

ARCHITECTURES = {1: "vgg", 2: "vgg_deep", 3: "resnet_se", 4: "vit"}


def _conv(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _fc_head(n_in, hidden, hidden2, n_classes, dropout=0.5):
    return [
        nn.Flatten(),
        nn.Linear(n_in, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden2),
        nn.BatchNorm1d(hidden2),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden2, n_classes),
    ]


def _vgg(in_ch, grid, n_classes, width, deep):
    layers = _conv(in_ch, width) + sum((_conv(width, width) for _ in range(3)), []) + [nn.MaxPool2d(2)]
    layers += (
        _conv(width, 2 * width) + sum((_conv(2 * width, 2 * width) for _ in range(3)), []) + [nn.MaxPool2d(2)]
    )
    if deep:
        layers += _conv(2 * width, 2 * width) + _conv(2 * width, 2 * width)
    side = (grid[0] // 4) * (grid[1] // 4)
    hidden = 8 * width
    return nn.Sequential(
        *layers, *_fc_head(2 * width * side, hidden, hidden // 2 if deep else hidden, n_classes)
    )


class SEBlock(nn.Module):
    """Residual block with squeeze-excitation (channel gates from globally pooled features)."""

    def __init__(self, cin, cout, stride, reduction=16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        r = max(cout // reduction, 4)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(cout, r, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(r, cout, 1),
            nn.Sigmoid(),
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        y = self.body(x)
        return F.relu(y * self.se(y) + self.skip(x))


def _resnet_se(in_ch, grid, n_classes, width):
    stages = [SEBlock(width, width, 2)] + [SEBlock(width, width, 1) for _ in range(2)]
    stages += [SEBlock(width, 2 * width, 2)] + [SEBlock(2 * width, 2 * width, 1) for _ in range(2)]
    hidden = 4 * width
    return nn.Sequential(
        nn.Conv2d(in_ch, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        *stages,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.4),
        nn.Linear(hidden, n_classes),
    )


class _TokenBN(nn.Module):
    """BatchNorm over the channel of ``(B, T, C)`` token features (the original normalises sub-layer outputs).

    The ``B * T`` tokens are the rows of one ``(B * T, C)`` batch: the same statistics as normalising
    ``(B, C, T)``, without the two transposed copies."""

    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.bn(x.reshape(-1, x.shape[-1])).view(x.shape)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention of ``(B, T, C)`` tokens with ``attn``'s weights (no dropout, no mask),
    through ``F.scaled_dot_product_attention``: what ``attn(x, x, x, need_weights=False)[0]`` computes,
    without its transposes to ``(T, B, C)`` and back (``tests/test_iem_tis.py`` checks the two agree)."""
    b, t, c = x.shape
    heads = attn.num_heads
    q, k, v = (
        F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        .view(b, t, 3, heads, c // heads)
        .permute(2, 0, 3, 1, 4)
    )
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        # bfloat16 on the CPU (TIS's fast mode): the explicit softmax(q k^T / sqrt(d)) v; the fused kernel is
        # several times slower there for heads this small (benchmarks/tis_speed.py)
        out = torch.softmax((q * (c // heads) ** -0.5) @ k.transpose(-1, -2), -1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, C / heads)
    return attn.out_proj(out.transpose(1, 2).reshape(b, t, c))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        # the weights' holder (its state-dict keys: attn.in_proj_*, attn.out_proj.*); forward uses
        # self_attention. No attention dropout: slow on CPU, little gain
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.bn1, self.bn2 = _TokenBN(dim), _TokenBN(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop(self.bn1(self_attention(self.attn, self.ln1(x))))
        return x + self.drop(self.bn2(self.mlp(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, in_ch, grid, n_classes, width, depth=4, heads=4, dropout=0.0):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(in_ch, width), nn.LayerNorm(width), nn.GELU())
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, grid[0] * grid[1] + 1, width) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(width, heads, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, n_classes)
        )

    def forward(self, x):
        tokens = self.proj(x.flatten(2).transpose(1, 2))
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.layers(tokens))[:, 0])


def build_iem(arch: int | str, in_channels: int, grid, n_classes: int, width: int = 64) -> nn.Module:
    """One of the four IEMs (``arch`` 1-4 or its name) for ``(N, in_channels, *grid)`` inputs."""
    name = ARCHITECTURES.get(arch, arch)
    if name not in ARCHITECTURES.values():
        raise ValueError(f"unknown IEM architecture {arch!r}; choose one of {ARCHITECTURES}")
    grid = tuple(grid)
    if name in ("vgg", "vgg_deep") and (grid[0] < 4 or grid[1] < 4):
        raise ValueError(f"the VGG IEMs pool twice and need a grid of at least 4x4, got {grid}")
    if name == "vgg":
        model = _vgg(in_channels, grid, n_classes, width, deep=False)
    elif name == "vgg_deep":
        model = _vgg(in_channels, grid, n_classes, width, deep=True)
    elif name == "resnet_se":
        model = _resnet_se(in_channels, grid, n_classes, width)
    else:
        model = ViT(in_channels, grid, n_classes, width)
    model.cortex_spec = {
        "arch": name,
        "in_channels": in_channels,
        "grid": list(grid),
        "n_classes": n_classes,
        "width": width,
    }
    return model


def check_input(model: nn.Module, embeddings: torch.Tensor, where: str = "input") -> None:
    spec = model.cortex_spec
    want = (spec["in_channels"], *spec["grid"])
    if embeddings.ndim != 4 or tuple(embeddings.shape[1:]) != want:
        raise ValueError(
            f"this IEM ({spec['arch']}) expects embeddings (N, {want[0]}, {want[1]}, {want[2]}), "
            f"got {tuple(embeddings.shape)} ({where})"
        )
    if not torch.isfinite(embeddings).all():
        raise ValueError(f"NaN or Inf in the embeddings ({where})")


def check_batch(model: nn.Module, embeddings: torch.Tensor, target, where: str = "batch") -> torch.Tensor:
    """A batch to attribute: embeddings this IEM takes (``check_input``), the IEM in eval mode and one target
    class per sample -> the targets as an int64 ``(N,)`` tensor on the embeddings' device."""
    check_input(model, embeddings, where)
    if model.training:
        raise RuntimeError(
            "attributions need the IEM in eval mode (call model.eval()): in training mode "
            "BatchNorm mixes the samples of a batch"
        )
    target = torch.as_tensor(target, device=embeddings.device).long().reshape(-1)
    if len(target) != len(embeddings):
        raise ValueError(f"{len(embeddings)} samples but {len(target)} targets ({where})")
    n_classes = model.cortex_spec["n_classes"]
    if len(target) and (target.min() < 0 or target.max() >= n_classes):
        raise ValueError(f"targets must lie in [0, {n_classes}) ({where})")
    return target


def train_iem(
    model: nn.Module,
    train_loader,
    val_loader,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    step_size: int | None = None,
    gamma: float = 0.1,
    log_csv: str | Path | None = None,
    desc: str = "train IEM",
    evaluate=None,
) -> tuple[pd.DataFrame, dict]:
    """Adam + StepLR + cross-entropy, as the original; keeps the weights of the best validation loss.

    Returns the per-epoch log (also written to ``log_csv`` after every epoch) and the best state dict.
    ``evaluate(model) -> {"loss", "top1", ...}`` replaces ``evaluate_iem(model, val_loader)`` (the
    distributed run evaluates each rank's share of the validation split and sums); a train loader whose
    sampler has ``set_epoch`` (``DistributedSampler``) is told the epoch, so each epoch is shuffled anew.
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size or max(1, epochs // 2), gamma=gamma)
    best, best_state, rows = math.inf, None, []
    for epoch in tqdm(range(epochs), desc=desc):
        model.train()
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        t0, total, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for b, (x, y, _) in enumerate(train_loader):
            if len(y) < 2:  # BatchNorm cannot train on a single sample
                continue
            check_input(model, x, f"training batch {b}")
            out = model(x)
            loss = F.cross_entropy(out, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss in epoch {epoch}, training batch {b}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        sched.step()
        val = evaluate(model) if evaluate is not None else evaluate_iem(model, val_loader)
        rows.append(
            {
                "epoch": epoch + 1,
                "train_loss": loss_sum / total,
                "train_acc": correct / total,
                "val_loss": val["loss"],
                "val_acc": val["top1"],
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
            }
        )
        if val["loss"] < best:
            best = val["loss"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if log_csv:
            pd.DataFrame(rows).to_csv(log_csv, index=False)
    model.load_state_dict(best_state)
    model.eval()
    return pd.DataFrame(rows), best_state


@torch.no_grad()
def predict(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a loader, in loader order."""
    model.eval()
    logits, labels = [], []
    for x, y, _ in loader:
        logits.append(model(x))
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def evaluate_iem(model: nn.Module, loader, ks=(1, 3, 5, 10)) -> dict:
    logits, y = predict(model, loader)
    out = {"loss": F.cross_entropy(logits, y).item()}
    ranks = logits.argsort(1, descending=True)
    for k in ks:
        out[f"top{k}"] = (ranks[:, : min(k, logits.shape[1])] == y[:, None]).any(1).float().mean().item()
    return out


def save_iem(model: nn.Module, path: str | Path, card: dict) -> Path:
    return save_weights(model.state_dict(), path, card={**card, "spec": model.cortex_spec})


def load_iem(path: str | Path, expect: dict | None = None) -> nn.Module:
    """Load an IEM saved by ``save_iem``; ``expect`` (e.g. ``{"arch": "vgg", "in_channels": 32}``) must
    match."""
    spec = read_card(path)["spec"]
    for k, v in (expect or {}).items():
        if k == "arch":
            v = ARCHITECTURES.get(v, v)
        if spec.get(k) != (list(v) if isinstance(v, tuple) else v):
            raise ValueError(f"{path} holds an IEM with {k} = {spec.get(k)!r}, expected {v!r}")
    model = build_iem(spec["arch"], spec["in_channels"], spec["grid"], spec["n_classes"], spec["width"])
    model.load_state_dict(
        check_state_dict(model, load_state_dict(path), ignore_prefixes=(), what=f"IEM {path}")
    )
    return model.eval()


def dataset_spec(ds) -> dict:
    """What an IEM must match to read the token dataset ``ds``: its embedding size, grid and classes (the
    ``expect`` of ``load_iem``)."""
    return {"in_channels": ds.manifest["embed_dim"], "grid": list(ds.grid), "n_classes": len(ds.class_names)}


def load_run_iem(run_dir: str | Path, arch: int, ds) -> nn.Module:
    """The IEM of architecture ``arch`` that notebook 03 registered in ``run_dir`` (``iem<arch>``), checked
    against the token dataset ``ds`` it is to read (``dataset_spec``)."""
    return load_iem(
        registered(run_dir, f"iem{arch}")["checkpoint"], expect={"arch": arch, **dataset_spec(ds)}
    )


def shipped_iem(path: str | Path, train_fingerprint: str, training: dict) -> tuple[Path | None, str]:
    """``(path, why)`` if the IEM at ``path`` is exactly what training here would produce: trained on the
    split with ``train_fingerprint`` (``datasets.split_fingerprint``) with the same ``training`` settings
    (and spec); else ``(None, why not)``."""
    path = Path(path)
    if not path.exists():
        return None, f"no shipped IEM at {path.name}"
    card = read_card(path)
    if card.get("train_fingerprint") != train_fingerprint:
        return (
            None,
            f"{path.name} was trained on another dataset (train split {card.get('train_fingerprint')})",
        )
    theirs = card.get("training", {})
    diff = sorted(k for k in training if theirs.get(k) != training[k])
    if diff:
        return None, f"{path.name} was trained with other settings: " + ", ".join(
            f"{k} {theirs.get(k)!r} (here {training[k]!r})" for k in diff
        )
    return path, f"{path.name} was trained on this exact train split with these settings"


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
