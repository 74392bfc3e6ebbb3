"""The paper's information extractor model (IEM): a classifier on token-embedding grids ``(N, D, h, w)``, in
the paper's four architectures (``ARCHITECTURES``), sized by the codebook's embed_dim, the grid, the classes
and a width (the original hard-codes 256 x 16 x 16, 1000 classes and 512 channels): ``vgg`` (two blocks of 4
conv-BN-ReLU and a max-pool, three FC layers), ``vgg_deep`` (two more convs), ``resnet_se`` (two stages of
three squeeze-excitation residual blocks) and ``vit`` (pre-LN encoder, BatchNorm on the sub-layer outputs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .devices import device_of
from .progress import tqdm

ARCHITECTURES = {1: "vgg", 2: "vgg_deep", 3: "resnet_se", 4: "vit"}


def _conv(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _fc(n_in, n_out, dropout):
    return [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]


def _vgg(in_ch, grid, n_classes, width, deep):
    w, w2, hidden = width, 2 * width, 8 * width
    layers = _conv(in_ch, w) + _conv(w, w) + _conv(w, w) + _conv(w, w) + [nn.MaxPool2d(2)]
    layers += _conv(w, w2) + _conv(w2, w2) + _conv(w2, w2) + _conv(w2, w2) + [nn.MaxPool2d(2)]
    if deep:
        layers += _conv(w2, w2) + _conv(w2, w2)
    n_in, hidden2 = w2 * (grid[0] // 4) * (grid[1] // 4), hidden // 2 if deep else hidden
    head = [nn.Flatten(), *_fc(n_in, hidden, 0.5), *_fc(hidden, hidden2, 0.5), nn.Linear(hidden2, n_classes)]
    return nn.Sequential(*layers, *head)


class SEBlock(nn.Module):
    """Residual block with squeeze-excitation (channel gates from globally pooled features)."""

    def __init__(self, cin, cout, stride, reduction=16):
        super().__init__()
        conv = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*conv, nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        r = max(cout // reduction, 4)
        gate = [nn.Conv2d(cout, r, 1), nn.ReLU(inplace=True), nn.Conv2d(r, cout, 1), nn.Sigmoid()]
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), *gate)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

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
        *_fc(2 * width, hidden, 0.4),
        nn.Linear(hidden, n_classes),
    )


class _TokenBN(nn.Module):
    """BatchNorm over the channel of ``(B, T, C)`` token features, as rows of one ``(B * T, C)`` batch."""

    def __init__(self, dim):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.bn(x.reshape(-1, x.shape[-1])).view(x.shape)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``attn(x, x, x, need_weights=False)[0]`` for ``(B, T, C)`` tokens (no dropout, no mask), without its
    transposes to ``(T, B, C)`` and back."""
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
        # holds the weights (state-dict keys attn.*) for self_attention; no attention dropout (slow on CPU)
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
    if name in ("vgg", "vgg_deep"):
        model = _vgg(in_channels, grid, n_classes, width, deep=name == "vgg_deep")
    elif name == "resnet_se":
        model = _resnet_se(in_channels, grid, n_classes, width)
    else:
        model = ViT(in_channels, grid, n_classes, width)
    spec = dict(arch=name, in_channels=in_channels, grid=list(grid), n_classes=n_classes, width=width)
    model.cortex_spec = spec
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


@dataclass(frozen=True)
class Training:
    """``train_iem``'s recipe: ``epochs`` of Adam (``lr``, ``weight_decay``), the learning rate times
    ``lr_gamma`` every ``lr_step`` epochs (None: half of them)."""

    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_step: int | None = None
    lr_gamma: float = 0.1


def train_iem(
    model: nn.Module,
    train_loader,
    val_loader,
    training: Training = Training(),
    log_csv: str | Path | None = None,
    desc: str = "train IEM",
    evaluate=None,
) -> tuple[pd.DataFrame, dict]:
    """Adam + StepLR + cross-entropy, as the original; keeps the weights of the best validation loss (by
    ``evaluate(model) -> {"loss", "top1"}``, default ``evaluate_iem`` on ``val_loader``). Returns the
    per-epoch log (also written to ``log_csv``) and the best state dict."""
    t = training
    opt = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    step = t.lr_step or max(1, t.epochs // 2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step, gamma=t.lr_gamma)
    best, best_state, rows, device = math.inf, None, [], device_of(model)
    for epoch in tqdm(range(t.epochs), desc=desc):
        model.train()
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        t0, total, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        for b, (x, y, _) in enumerate(train_loader):
            if len(y) < 2:  # BatchNorm cannot train on a single sample
                continue
            check_input(model, x, f"training batch {b}")
            x, y = x.to(device), y.to(device)
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
        row = {"epoch": epoch + 1, "train_loss": loss_sum / total, "train_acc": correct / total}
        row |= {"val_loss": val["loss"], "val_acc": val["top1"], "lr": opt.param_groups[0]["lr"]}
        rows.append(row | {"seconds": time.perf_counter() - t0})
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
    """Logits and labels over a loader, in loader order (on the host)."""
    model.eval()
    logits, labels, device = [], [], device_of(model)
    for x, y, _ in loader:
        logits.append(model(x.to(device)).cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def evaluate_iem(model: nn.Module, loader, ks=(1, 3, 5, 10)) -> dict:
    logits, y = predict(model, loader)
    out = {"loss": F.cross_entropy(logits, y).item()}
    ranks = logits.argsort(1, descending=True)
    for k in ks:
        out[f"top{k}"] = (ranks[:, : min(k, logits.shape[1])] == y[:, None]).any(1).float().mean().item()
    return out


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
