"""Token datasets: labelled grids of codebook ids, the object every CORTEX stage reads.

On disk, one folder per dataset::

    manifest.json            class names, grid, codebook size/dim, source, VQ fingerprint, split sizes
    <split>_tokens.npy       (N, h, w) uint8 / uint16 codebook ids
    <split>_labels.npy       (N,) uint8 / uint16 class ids
    <split>_names.npy        optional (N,) file names (imported / image-folder data)

Embeddings are ``codebook[tokens]``, computed on the fly, never stored per image.
A dataset refers to one codebook: loading it next to another VQ model is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import atomic_path

FORMAT = "cortex-tokens/1"


@dataclass
class TokenDataset:
    """Token grids and labels per split, plus the manifest that says what they mean."""

    manifest: dict
    tokens: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    names: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def splits(self) -> list[str]:
        return list(self.tokens)

    def frame(self, split: str) -> pd.DataFrame:
        """One row per image: split, position, label, class name, name, and the ids as a list."""
        t, y = self.tokens[split], self.labels[split]
        names = self.names.get(split)
        return pd.DataFrame({
            "split": split,
            "row": np.arange(len(y)),
            "label": y.astype(np.int64),
            "class_name": np.asarray(self.class_names, dtype=object)[y],
            "name": names if names is not None else [f"{split}_{i:06d}" for i in range(len(y))],
            "indices": list(t.reshape(len(t), -1)),
        })


def _id_dtype(n: int):
    return np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.int32


def validate(tokens: np.ndarray, labels: np.ndarray, n_embed: int, n_classes: int, grid, split: str) -> None:
    tokens, labels = np.asarray(tokens), np.asarray(labels)
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != tuple(grid):
        raise ValueError(f"{split}: token grids must have shape (N, {grid[0]}, {grid[1]}), got {tokens.shape}")
    if len(tokens) != len(labels):
        raise ValueError(f"{split}: {len(tokens)} token grids but {len(labels)} labels")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= n_embed):
        bad = int(np.argmax((tokens.reshape(len(tokens), -1) >= n_embed).any(1) | (tokens.reshape(len(tokens), -1) < 0).any(1)))
        raise ValueError(f"{split}: row {bad} has a token id outside [0, {n_embed})")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{split}: labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")


def save_token_dataset(path: str | os.PathLike, splits: dict[str, tuple], class_names: list[str],
                       vq_meta: dict, source: str, details: dict | None = None,
                       names: dict[str, np.ndarray] | None = None) -> TokenDataset:
    """Write a token dataset folder atomically (a failed or interrupted write leaves nothing behind).

    ``splits`` maps split name -> ``(tokens (N,h,w), labels (N,))``; ``vq_meta`` is ``vq.vq_meta(model)``.
    Every class must have at least one training image.
    """
    grid, n_embed = tuple(vq_meta["grid"]), int(vq_meta["n_embed"])
    if "train" not in splits:
        raise ValueError("a token dataset needs a 'train' split")
    for s, (t, y) in splits.items():
        validate(t, y, n_embed, len(class_names), grid, s)
    counts = np.bincount(np.asarray(splits["train"][1]), minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ValueError(f"class(es) with no training images: {empty[:10]}")
    manifest = {"format": FORMAT, "class_names": list(class_names), "source": source,
                **{k: vq_meta[k] for k in ("vq_fingerprint", "n_embed", "embed_dim", "grid", "image_size",
                                           "image_channels") if k in vq_meta},
                "splits": {s: int(len(y)) for s, (_, y) in splits.items()},
                "details": details or {}}
    tid, lid = _id_dtype(n_embed), _id_dtype(len(class_names))
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for s, (t, y) in splits.items():
            np.save(tmp / f"{s}_tokens.npy", np.asarray(t).astype(tid))
            np.save(tmp / f"{s}_labels.npy", np.asarray(y).astype(lid))
            if names and s in names:
                np.save(tmp / f"{s}_names.npy", np.asarray(names[s]).astype(str))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return load_token_dataset(path)


def load_token_dataset(path: str | os.PathLike, vq=None) -> TokenDataset:
    """Load a token dataset; with ``vq`` given, refuse it unless its ids refer to that model's codebook."""
    path = Path(path)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise FileNotFoundError(f"no token dataset at {path} (manifest.json missing)")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown dataset format {manifest.get('format')!r} (expected {FORMAT})")
    tokens, labels, names = {}, {}, {}
    for s in manifest["splits"]:
        tokens[s] = np.load(path / f"{s}_tokens.npy")
        labels[s] = np.load(path / f"{s}_labels.npy")
        if (path / f"{s}_names.npy").exists():
            names[s] = np.load(path / f"{s}_names.npy")
    ds = TokenDataset(manifest, tokens, labels, names, path)
    if vq is not None:
        check_matches(ds, vq)
    return ds


def split_fingerprint(ds: TokenDataset, split: str) -> str:
    """Identity of a split's content (sha256 of its ids and labels, 16 hex digits): which exact images a
    model was trained on."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(ds.tokens[split].astype(np.int64)).tobytes())
    h.update(np.ascontiguousarray(ds.labels[split].astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def codebook_fingerprint(codebook: torch.Tensor) -> str:
    """Identity of the codebook that token ids refer to: sha256 of its float32 bytes and shape (the
    ``vq_fingerprint`` of a manifest; ``vq.fingerprint`` for a model)."""
    import hashlib

    cb = codebook.float().cpu().contiguous().numpy()
    return hashlib.sha256(cb.tobytes() + str(cb.shape).encode()).hexdigest()[:16]


def check_matches(ds: TokenDataset, vq) -> None:
    """Raise unless the dataset's token ids were made with ``vq``'s codebook."""
    from .vq import fingerprint

    fp = fingerprint(vq)
    if ds.manifest["vq_fingerprint"] != fp:
        raise ValueError(
            f"dataset {ds.path} was tokenized by a VQ model with codebook fingerprint "
            f"{ds.manifest['vq_fingerprint']}, but the model in use has {fp}: its ids mean different "
            f"embeddings. Re-create the dataset with this model, or load the model it was made with.")


def dataset_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def embedding_loader(ds: TokenDataset, split: str, codebook: torch.Tensor, batch_size: int = 128,
                     shuffle: bool = False, seed: int = 0):
    """A DataLoader of ``(embeddings (B, D, h, w) float, labels (B,) long, rows (B,) long)`` batches."""
    if split not in ds.tokens:
        raise KeyError(f"split {split!r} not in dataset (has {ds.splits})")
    if codebook.shape != (ds.manifest["n_embed"], ds.manifest["embed_dim"]):
        raise ValueError(f"codebook shape {tuple(codebook.shape)} does not match the dataset's "
                         f"({ds.manifest['n_embed']}, {ds.manifest['embed_dim']})")
    t = torch.from_numpy(ds.tokens[split].astype(np.int64))
    y = torch.from_numpy(ds.labels[split].astype(np.int64))
    rows = torch.arange(len(y))

    def collate(idx):
        idx = torch.as_tensor(idx)
        return codebook[t[idx]].permute(0, 3, 1, 2).contiguous(), y[idx], rows[idx]

    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(range(len(y)), batch_size=batch_size, shuffle=shuffle, generator=g,
                                       collate_fn=collate)


# --- the original CORTEX CSV layout ------------------------------------------------------------

def read_cortex_csv(csv_path: str | os.PathLike, grid, n_embed: int,
                    labelled: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a ``filename,label,indices`` CSV (indices: a list literal of ``h*w`` ids, row-major).

    Returns ``(tokens (N,h,w), labels (N,), filenames (N,))``; a row with the wrong number of ids or an id
    outside the codebook is an error naming the file and line. Parsing is vectorized (no literal_eval).
    With ``labelled=False`` (e.g. neutral-prompt generations) only ``indices`` is needed; labels are -1.
    """
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FileNotFoundError(f"CSV not found: {csv_path}")
    df = pd.read_csv(csv_path, dtype={"indices": str})
    for col in ("label", "indices") if labelled else ("indices",):
        if col not in df.columns:
            raise ValueError(f"{csv_path}: missing column {col!r} (has {list(df.columns)})")
    if df.empty:
        raise ValueError(f"{csv_path}: no rows")
    n = grid[0] * grid[1]
    body = df["indices"].fillna("").str.strip().str.strip("[]()")
    lengths = body.str.count(",") + 1 - body.str.rstrip().str.endswith(",").astype(int)
    lengths[body.str.strip() == ""] = 0
    bad = np.flatnonzero(lengths.to_numpy() != n)
    if len(bad):
        raise ValueError(f"{csv_path}: line {bad[0] + 2} has {lengths.iloc[bad[0]]} token ids, expected "
                         f"{n} (= {grid[0]}x{grid[1]} grid); {len(bad)} such row(s)")
    try:
        flat = np.array(",".join(body.str.rstrip(",")).split(","), dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{csv_path}: indices must be integers ({err})") from None
    tokens = flat.reshape(len(df), *grid)
    out = (tokens < 0) | (tokens >= n_embed)
    if out.any():
        row = int(np.flatnonzero(out.reshape(len(df), -1).any(1))[0])
        raise ValueError(f"{csv_path}: line {row + 2} has a token id outside the codebook [0, {n_embed})")
    names = df["filename"].astype(str).to_numpy() if "filename" in df.columns else np.array(
        [f"{csv_path.stem}_{i}" for i in range(len(df))])
    labels = df["label"].to_numpy(np.int64) if labelled else np.full(len(df), -1, dtype=np.int64)
    return tokens, labels, names


def import_cortex_csv(out_path, csv_paths: dict[str, str | os.PathLike], vq_meta: dict,
                      class_names: list[str] | None = None) -> TokenDataset:
    """Import the original's split CSVs (e.g. ``{"train": "train_embeddings.csv", ...}``) into our format."""
    grid, n_embed = tuple(vq_meta["grid"]), int(vq_meta["n_embed"])
    parts = {s: read_cortex_csv(p, grid, n_embed) for s, p in csv_paths.items()}
    if class_names is None:
        n_classes = int(max(y.max() for _, y, _ in parts.values())) + 1
        class_names = [str(i) for i in range(n_classes)]
    return save_token_dataset(out_path, {s: (t, y) for s, (t, y, _) in parts.items()}, class_names, vq_meta,
                              source="imported", details={"csv": {s: str(p) for s, p in csv_paths.items()}},
                              names={s: n for s, (_, _, n) in parts.items()})


def export_cortex_csv(ds: TokenDataset, split: str, csv_path: str | os.PathLike) -> Path:
    """Write one split in the original's ``filename,label,indices`` layout."""
    f = ds.frame(split)
    out = pd.DataFrame({"filename": f["name"], "label": f["label"],
                        "indices": ["[" + ", ".join(map(str, r.tolist())) + "]" for r in f["indices"]]})
    with atomic_path(csv_path) as tmp:
        out.to_csv(tmp, index=False)
    return Path(csv_path)


# --- real images -------------------------------------------------------------------------------

def read_image_folder(root: str | os.PathLike, size: int, channels: int = 3):
    """An ImageFolder-layout tree (one sub-folder per class) as uint8 ``(N, C, size, size)``, labels,
    class names and file names. Images are resized (shorter side) and centre-cropped to ``size``."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    images, labels, names = [], [], []
    for c, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in exts)
        if not files:
            raise ValueError(f"class folder {root / name} has no images")
        for p in files:
            im = Image.open(p).convert("RGB" if channels == 3 else "L")
            scale = size / min(im.size)
            im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
            images.append(arr.reshape(size, size, -1).transpose(2, 0, 1))
            labels.append(c)
            names.append(f"{name}/{p.name}")
    return np.stack(images), np.array(labels), classes, np.array(names)
