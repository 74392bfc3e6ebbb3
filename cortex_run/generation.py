"""Dataset generation, as in the paper: a class-conditional taming ``Net2NetTransformer`` (Labelator
condition, minGPT) samples token grids per class; the VQ decoder turns them into images. The condition token
is the class id itself, sharing the vocabulary with the codebook ids (taming's ImageNet ``cin_transformer``).
Only the taming family has this prior; ``vqvae`` has none."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cortex_utils import vq as vqlib
from cortex_utils.devices import device_of
from cortex_utils.progress import tqdm

from . import digits, taming_vq
from .checkpoints import check_state_dict, load_state_dict

NET2NET_TARGET = "taming.models.cond_transformer.Net2NetTransformer"


class CondTransformer(torch.nn.Module):
    """taming's ``Net2NetTransformer`` without Lightning: the same submodules, names and build order (a seed
    gives the same weights; taming's ``.ckpt`` and our safetensors load unchanged), the first stage given
    built. ``forward(x, c)`` is taming's training objective: ``(logits, target)``."""

    def __init__(
        self,
        first_stage_model,
        transformer_config,
        cond_stage_config,
        permuter_config=None,
        first_stage_key="image",
        cond_stage_key="depth",
        downsample_cond_size=-1,
        pkeep=1.0,
        sos_token=0,
        unconditional=False,
    ):
        super().__init__()
        self.be_unconditional = unconditional
        self.sos_token = sos_token
        self.first_stage_key = first_stage_key
        self.cond_stage_key = cond_stage_key
        self.first_stage_model = first_stage_model.eval()
        if cond_stage_config == "__is_first_stage__":
            self.cond_stage_model = self.first_stage_model
        elif cond_stage_config == "__is_unconditional__" or unconditional:
            self.be_unconditional = True
            self.cond_stage_key = first_stage_key
            self.cond_stage_model = taming_vq.instantiate(
                {"target": "taming.modules.util.SOSProvider", "params": {"sos_token": sos_token}}
            )
        else:
            self.cond_stage_model = taming_vq.instantiate(cond_stage_config).eval()
        self.permuter = taming_vq.instantiate(
            permuter_config or {"target": "taming.modules.transformer.permuter.Identity"}
        )
        self.transformer = taming_vq.instantiate(transformer_config)
        self.downsample_cond_size = downsample_cond_size
        self.pkeep = pkeep

    def train(self, mode: bool = True):
        """As in taming, the first and condition stages stay in eval mode."""
        super().train(mode)
        self.first_stage_model.eval()
        self.cond_stage_model.eval()
        return self

    @torch.no_grad()
    def encode_to_z(self, x):
        quant_z, _, info = self.first_stage_model.encode(x)
        return quant_z, self.permuter(info[2].view(quant_z.shape[0], -1))

    @torch.no_grad()
    def encode_to_c(self, c):
        if self.downsample_cond_size > -1:
            c = F.interpolate(c, size=(self.downsample_cond_size, self.downsample_cond_size))
        quant_c, _, (_, _, indices) = self.cond_stage_model.encode(c)
        if indices.ndim > 2:
            indices = indices.view(c.shape[0], -1)
        return quant_c, indices

    def forward(self, x, c):
        """Next-token logits for ``[c, z]`` and their targets ``z`` (``pkeep``: corruption in training)."""
        _, z = self.encode_to_z(x)
        _, c = self.encode_to_c(c)
        a = z
        if self.training and self.pkeep < 1.0:
            mask = torch.bernoulli(self.pkeep * torch.ones(z.shape, device=z.device)).round().to(torch.int64)
            a = mask * z + (1 - mask) * torch.randint_like(z, self.transformer.config.vocab_size)
        logits, _ = self.transformer(torch.cat((c, a), 1)[:, :-1])
        return logits[:, c.shape[1] - 1 :], z


def transformer_config(
    vq_config: dict,
    n_classes: int,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 128,
    dropout: float = 0.0,
) -> dict:
    """A taming ``Net2NetTransformer`` config over ``vq_config``'s tokens, conditioned on ``n_classes``. No
    dropout by default: short runs underfit, and it costs a third of each CPU step (val loss 2.35 vs 2.41)."""
    first_stage = taming_vq.read_config(vq_config)
    p = first_stage["params"]
    h = p["ddconfig"]["resolution"] // 2 ** (len(p["ddconfig"]["ch_mult"]) - 1)
    if n_classes > p["n_embed"]:
        raise ValueError(f"{n_classes} condition tokens do not fit a vocabulary of {p['n_embed']} codes")
    gpt = {"vocab_size": p["n_embed"], "block_size": h * h, "n_layer": n_layer, "n_head": n_head}
    gpt.update(n_embd=n_embd, embd_pdrop=dropout, resid_pdrop=dropout, attn_pdrop=dropout)
    labelator = {"target": "taming.modules.util.Labelator", "params": {"n_classes": n_classes}}
    params = {"cond_stage_key": "class_label"}
    params["transformer_config"] = {"target": "taming.modules.transformer.mingpt.GPT", "params": gpt}
    params.update(first_stage_config=first_stage, cond_stage_config=labelator)
    return {"target": NET2NET_TARGET, "params": params}


def build_transformer(config, vq=None, seed: int | None = None) -> CondTransformer:
    """A ``CondTransformer`` from a taming ``Net2NetTransformer`` config (dict or YAML path). With ``vq``
    given, it is the first stage (no second copy of the tokenizer is built)."""
    config = taming_vq.read_config(config)
    if config["target"] != NET2NET_TARGET:
        raise ValueError(f"config target {config['target']} is not taming's {NET2NET_TARGET}")
    params = copy.deepcopy(config["params"])
    params.pop("ckpt_path", None)  # taming would unpickle it without weights_only; load_transformer loads
    params.pop("ignore_keys", None)  # only used with ckpt_path
    first_stage_config = taming_vq.read_config(params.pop("first_stage_config"))
    if seed is not None:
        torch.manual_seed(seed)
    tokenizer = vq if vq is not None else taming_vq.build(first_stage_config)
    if not isinstance(tokenizer, taming_vq.TamingTokenizer):
        raise TypeError(
            f"a taming transformer needs a taming tokenizer as its first stage, got "
            f"{type(tokenizer).__name__} (family {getattr(tokenizer, 'family', '?')!r})"
        )
    model = CondTransformer(tokenizer.model, **params)
    model.tokenizer = tokenizer  # the first stage behind the tokenizer protocol (grid, encode, decode)
    model.cortex_config = config
    return model.eval()


def load_transformer(config, checkpoint, vq=None, trust_pickle: bool = False):
    """Load a Net2NetTransformer from a Lightning ``.ckpt`` (cin_transformer layout) or our safetensors
    (transformer weights only). With ``vq`` given, it is the first stage, and the checkpoint's first-stage
    weights, if any, must hold the same codebook."""
    state = load_state_dict(checkpoint, trust_pickle=trust_pickle)
    model = build_transformer(config, vq=vq)

    def under(prefix):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    what = f"transformer checkpoint {checkpoint}"
    model.transformer.load_state_dict(check_state_dict(model.transformer, under("transformer."), (), what))
    first = under("first_stage_model.")
    if first and vq is None:
        model.first_stage_model.load_state_dict(
            check_state_dict(model.first_stage_model, first, what=f"first stage of {checkpoint}")
        )
    elif first and not torch.equal(first["quantize.embedding.weight"], vqlib.codebook(vq)):
        raise ValueError(f"{checkpoint} was trained on another codebook than the VQ model given")
    return model.eval()


def train_transformer(
    model,
    tokens: np.ndarray,
    labels: np.ndarray,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    log_every: int = 50,
    val=None,
    warmup: int = 100,
    bf16: bool = False,
) -> pd.DataFrame:
    """Next-token cross-entropy on ``[class, z_1 .. z_{hw}]`` (taming's objective on precomputed token
    grids). ``val``: optional ``(tokens, labels)`` for a validation loss in the log. AdamW, linear warm-up
    over ``warmup`` steps, then cosine decay to 5 % of ``lr``. ``bf16``: the GPT in bfloat16 autocast."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    z = torch.as_tensor(tokens).long().flatten(1)
    c = torch.as_tensor(labels).long()[:, None]
    gpt = model.transformer
    device = device_of(gpt)  # batches move there; the draws of rows stay numpy's on the host
    opt = torch.optim.AdamW(gpt.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)

    def factor(s):
        cosine = 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s, steps) / max(steps, 1)))
        return min(1.0, (s + 1) / max(warmup, 1)) * cosine

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if val is not None:
        val_c = torch.as_tensor(val[1]).long()[:, None].to(device)
        val_z = torch.as_tensor(val[0]).long().flatten(1).to(device)
    log = []
    gpt.train()
    bar = tqdm(range(steps), desc="train transformer")
    for step in bar:
        i = torch.as_tensor(rng.integers(0, len(z), batch_size))
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = sequence_loss(gpt, c[i].to(device), z[i].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gpt.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            row = {"step": step, "loss": loss.item()}
            if val is not None:
                gpt.eval()
                with torch.no_grad():
                    row["val_loss"] = sequence_loss(gpt, val_c, val_z).item()
                gpt.train()
            log.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
    gpt.eval()
    return pd.DataFrame(log)


def sequence_loss(gpt, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    logits, _ = gpt(torch.cat([c, z], 1)[:, :-1])
    logits = logits[:, c.shape[1] - 1 :]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), z.reshape(-1))


@torch.no_grad()
def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of ``probs`` ``(N, K)`` by inverse CDF: ``(N, 1)`` int64. ``torch.rand``'s stream is
    the same on every CPU; ``torch.multinomial``'s draws differed between machines (same weights and seed).
    The uniforms come from the CPU ``generator`` and move to ``probs``' device: the same on a GPU."""
    u = torch.rand(len(probs), 1, generator=generator, dtype=torch.float64).to(probs.device)
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(probs.shape[-1] - 1)


def suppression_mask(ids, vocab_size: int) -> torch.Tensor:
    """``(vocab_size,)`` bool, True at each of ``ids`` (the tokens ``suppress=ids`` never draws). Refuses an
    empty set, non-integer ids, ids outside ``[0, vocab_size)``, and a set that leaves nothing to draw."""
    ids = np.asarray(ids).ravel()
    if ids.size == 0:
        raise ValueError("suppress: an empty set of token ids (give None to suppress nothing)")
    if ids.dtype.kind not in "iu":
        raise ValueError(f"suppress: token ids must be integers, got dtype {ids.dtype}")
    bad = sorted({int(i) for i in ids if not 0 <= i < vocab_size})
    if bad:
        raise ValueError(f"suppress: id(s) {bad[:10]} outside the codebook [0, {vocab_size})")
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[torch.as_tensor(ids, dtype=torch.long)] = True
    if mask.all():
        raise ValueError(f"suppress: all {vocab_size} ids suppressed, nothing left to sample")
    return mask


def _allowed(logits: torch.Tensor, banned, top_k) -> torch.Tensor:
    """``logits`` with the ``banned`` ids, then all but the ``top_k`` largest, set to -inf."""
    if banned is not None:
        logits = logits.masked_fill(banned, -float("inf"))
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    return logits


def sample_tokens(
    model,
    labels,
    temperature: float = 1.0,
    top_k: int | None = 100,
    batch_size: int = 500,
    seed: int = 0,
    progress: bool = True,
    suppress=None,
) -> torch.Tensor:
    """Sample one token grid per entry of ``labels`` -> ``(N, h, w)`` int64, with minGPT's key/value cache.
    ``suppress``: token ids never drawn (-inf logits before ``top_k``: the k most likely *allowed* remain)."""
    gpt = model.transformer.eval()
    h, w = vqlib.grid_shape(model.tokenizer)
    banned = None if suppress is None else suppression_mask(suppress, gpt.config.vocab_size)
    labels = torch.as_tensor(labels).long()
    gen, device = torch.Generator().manual_seed(seed), device_of(gpt)
    banned = None if banned is None else banned.to(device)
    out = []
    bar = tqdm(total=len(labels), desc="sample", disable=not progress)
    for i in range(0, len(labels), batch_size):
        x = labels[i : i + batch_size, None].to(device)
        past, seq = None, []
        for n in range(h * w):
            logits, _, present = gpt.forward_with_past(x, past=past, past_length=n)
            past = [present] if past is None else past + [present]
            logits = _allowed(logits[:, -1, :] / temperature, banned, top_k)
            x = draw(F.softmax(logits.double(), -1), gen)
            seq.append(x)
        out.append(torch.cat(seq, 1).reshape(-1, h, w).cpu())
        bar.update(len(x))
    bar.close()
    return torch.cat(out)


@torch.no_grad()
def sample_guided(
    model,
    labels,
    rivals,
    scale: float,
    temperature: float = 1.0,
    top_k: int | None = 100,
    seed: int = 0,
    suppress=None,
) -> torch.Tensor:
    """As ``sample_tokens``, with classifier-free guidance (Ho & Salimans 2022) toward each row's prompt
    against its ``rivals`` (``(N, R)`` condition tokens, the row's own label among them): at every step
    $\\log p_c+\\text{scale}\\,(\\log p_c-\\log p_u)$, with $\\log p_u=\\log\\sum_r w_r\\,p_r$ the rivals'
    mixture weighted by the transformer's posterior over them given the tokens so far (uniform at first).
    ``scale`` 0 samples as ``sample_tokens`` (up to rounding). Batches of 100 rows, ``R`` passes each."""
    gpt = model.transformer.eval()
    h, w = vqlib.grid_shape(model.tokenizer)
    banned = None if suppress is None else suppression_mask(suppress, gpt.config.vocab_size)
    labels, rivals = torch.as_tensor(labels).long(), torch.as_tensor(np.asarray(rivals)).long()
    own = (rivals == labels[:, None]).long().argmax(1)
    if not (rivals == labels[:, None]).any(1).all():
        raise ValueError("sample_guided: every row's label must be one of its rivals")
    gen, device = torch.Generator().manual_seed(seed), device_of(gpt)
    banned, own = None if banned is None else banned.to(device), own.to(device)
    out = []
    for i in range(0, len(labels), 100):
        r = rivals[i : i + 100].to(device)
        n, k = r.shape
        x, past, seq = r.reshape(-1, 1), None, []
        seen = torch.zeros(n, k, dtype=torch.float64, device=device)
        for step in range(h * w):
            logits, _, present = gpt.forward_with_past(x, past=past, past_length=step)
            past = [present] if past is None else past + [present]
            logp = F.log_softmax(logits[:, -1, :].double(), -1).reshape(n, k, -1)
            mine = logp[torch.arange(n, device=device), own[i : i + 100]]
            mixture = torch.logsumexp(F.log_softmax(seen, 1)[:, :, None] + logp, 1)
            z = _allowed((mine + scale * (mine - mixture)) / temperature, banned, top_k)
            token = draw(F.softmax(z, -1), gen)
            seen += logp.gather(2, token[:, None, :].expand(n, k, 1)).squeeze(2)
            seq.append(token)
            x = token.repeat_interleave(k, 0)
        out.append(torch.cat(seq, 1).reshape(-1, h, w).cpu())
    return torch.cat(out)


def colour_augmented_tokens(
    vq, gray: np.ndarray, labels: np.ndarray, colourings: int = 4, seed: int = 0, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The transformer's training data: each real digit in ``colourings`` random palette colours,
    tokenized -> ``(len(gray) * colourings, h, w)`` token grids and their labels."""
    rng = np.random.default_rng(seed)
    bar = tqdm(range(colourings), desc="tokenize colourings", disable=not progress)
    tokens = [vqlib.encode(vq, digits.augment_batch(gray, rng)).numpy() for _ in bar]
    return np.concatenate(tokens), np.tile(np.asarray(labels), colourings)


def balanced_labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


def transformer_state_for_saving(model) -> dict:
    return {f"transformer.{k}": v for k, v in model.transformer.state_dict().items()}
