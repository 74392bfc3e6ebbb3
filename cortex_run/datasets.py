"""Token datasets: labelled grids of codebook ids, the object every CORTEX stage reads.

On disk, one folder per dataset::

    manifest.json            class names, grid, codebook size/dim, source, VQ family and fingerprint, sizes
    <split>_tokens.npy       (N, h, w) uint8 / uint16 codebook ids
    <split>_labels.npy       (N,) uint8 / uint16 class ids
    <split>_names.npy        optional (N,) file names (imported / image-folder data)
    <split>_<column>.npy     optional (N,) integer columns listed in the manifest's ``columns``

Embeddings are ``codebook[tokens]``, made on the fly; a VQ model with another codebook refuses the dataset.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import DEFAULT_FAMILY
from .artifacts import atomic_path, read_json, write_json
from .checkpoints import card_path

FORMAT = "cortex-tokens/1"
META_KEYS = ("vq_family", "vq_fingerprint", "n_embed", "embed_dim", "grid", "image_size", "image_channels")


@dataclass
class TokenDataset:
    """Token grids and labels per split, plus the manifest that says what they mean."""

    manifest: dict
    tokens: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    names: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None
    columns: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # {split: {column: (N,) ints}}

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def vq_family(self) -> str:
        return self.manifest.get("vq_family", DEFAULT_FAMILY)  # datasets made before families: taming

    @property
    def splits(self) -> list[str]:
        return list(self.tokens)


def _id_dtype(n: int):
    return np.uint8 if n <= 256 else np.uint16 if n <= 65536 else np.int32


def validate(tokens: np.ndarray, labels: np.ndarray, n_embed: int, n_classes: int, grid, split: str) -> None:
    tokens, labels = np.asarray(tokens), np.asarray(labels)
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != tuple(grid):
        raise ValueError(
            f"{split}: token grids must have shape (N, {grid[0]}, {grid[1]}), got {tokens.shape}"
        )
    if len(tokens) != len(labels):
        raise ValueError(f"{split}: {len(tokens)} token grids but {len(labels)} labels")
    outside = ((tokens < 0) | (tokens >= n_embed)).any(axis=(1, 2))
    if outside.any():
        raise ValueError(f"{split}: row {np.argmax(outside)} has a token id outside [0, {n_embed})")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{split}: labels must lie in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
        )


def save_token_dataset(
    path: str | os.PathLike,
    splits: dict[str, tuple],
    class_names: list[str],
    vq_meta: dict,
    source: str,
    details: dict | None = None,
    names: dict[str, np.ndarray] | None = None,
    classifier_data: bool = True,
    columns: dict[str, dict[str, np.ndarray]] | None = None,
) -> TokenDataset:
    """Write a token dataset folder atomically (a failed or interrupted write leaves nothing behind).
    ``splits``: ``{split: (tokens (N,h,w), labels (N,))}``; ``vq_meta``: ``vq.vq_meta(model)``. ``columns``:
    per split, the same named integer arrays, one value per image (e.g. a composite target's side).
    ``classifier_data`` needs a train split with every class in it."""
    grid, n_embed = tuple(vq_meta["grid"]), int(vq_meta["n_embed"])
    if not splits:
        raise ValueError("a token dataset needs at least one split")
    if classifier_data and "train" not in splits:
        raise ValueError("a token dataset needs a 'train' split")
    for s, (t, y) in splits.items():
        validate(t, y, n_embed, len(class_names), grid, s)
    if classifier_data:
        counts = np.bincount(np.asarray(splits["train"][1]), minlength=len(class_names))
        empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise ValueError(f"class(es) with no training images: {empty[:10]}")
    column_names = _check_columns(columns, splits)
    manifest = {
        "format": FORMAT,
        "class_names": list(class_names),
        "source": source,
        **{k: vq_meta[k] for k in META_KEYS if k in vq_meta},
        "splits": {s: int(len(y)) for s, (_, y) in splits.items()},
        "details": details or {},
    }
    if column_names:
        manifest["columns"] = column_names
    tid, lid = _id_dtype(n_embed), _id_dtype(len(class_names))
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for s, (t, y) in splits.items():
            np.save(tmp / f"{s}_tokens.npy", np.asarray(t).astype(tid))
            np.save(tmp / f"{s}_labels.npy", np.asarray(y).astype(lid))
            if names and s in names:
                np.save(tmp / f"{s}_names.npy", np.asarray(names[s]).astype(str))
            for c in column_names:
                v = np.asarray(columns[s][c])  # the smallest integer type that holds the values
                small = np.result_type(*map(np.min_scalar_type, (v.min(), v.max()))) if v.size else v.dtype
                np.save(tmp / f"{s}_{c}.npy", v.astype(small))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return load_token_dataset(path)


_RESERVED_COLUMNS = {"tokens", "labels", "names"}


def _check_columns(columns, splits) -> list[str]:
    """The names of ``save_token_dataset``'s ``columns``, checked."""
    if not columns:
        return []
    if set(columns) != set(splits):
        raise ValueError(f"columns must be given for every split {sorted(splits)}, got {sorted(columns)}")
    names = sorted(next(iter(columns.values())))
    for s, cols in columns.items():
        if sorted(cols) != names:
            raise ValueError(f"every split needs the same columns: {s} has {sorted(cols)}, another {names}")
        for c, v in cols.items():
            v = np.asarray(v)
            if not c.isidentifier() or c in _RESERVED_COLUMNS:
                raise ValueError(
                    f"column name {c!r} must be an identifier other than {sorted(_RESERVED_COLUMNS)}"
                )
            if v.shape != (len(splits[s][1]),) or not np.issubdtype(v.dtype, np.integer):
                raise ValueError(
                    f"{s}: column {c!r} must hold one integer per image ({len(splits[s][1])}), "
                    f"got {v.dtype} of shape {v.shape}"
                )
    return names


def load_token_dataset(path: str | os.PathLike, vq=None) -> TokenDataset:
    """Load a token dataset; with ``vq`` given, refuse it unless its ids refer to that model's codebook."""
    path = Path(path)
    if not (path / "manifest.json").exists():
        raise FileNotFoundError(f"no token dataset at {path} (manifest.json missing)")
    manifest = read_json(path / "manifest.json")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown dataset format {manifest.get('format')!r} (expected {FORMAT})")
    tokens, labels, names, columns = {}, {}, {}, {}
    for s, n in manifest["splits"].items():
        tokens[s] = _read_array(path / f"{s}_tokens.npy", n)
        labels[s] = _read_array(path / f"{s}_labels.npy", n)
        if (path / f"{s}_names.npy").exists():
            names[s] = _read_array(path / f"{s}_names.npy", n)
        columns[s] = {c: _read_array(path / f"{s}_{c}.npy", n) for c in manifest.get("columns", [])}
    ds = TokenDataset(manifest, tokens, labels, names, path, columns if manifest.get("columns") else {})
    if vq is not None:
        check_matches(ds, vq)
    return ds


def _read_array(file: Path, rows: int) -> np.ndarray:
    """One ``.npy`` of a dataset, with an error naming the file if it is missing, damaged or short."""
    if not file.exists():
        raise FileNotFoundError(f"token dataset file {file} is missing (its manifest.json lists that split)")
    try:
        array = np.load(file)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(
            f"token dataset file {file} cannot be read ({err}): it is damaged or truncated"
        ) from None
    if len(array) != rows:
        raise ValueError(f"token dataset file {file} holds {len(array)} rows, its manifest.json says {rows}")
    return array


def split_fingerprint(ds: TokenDataset, split: str) -> str:
    """sha256 (16 hex digits) of a split's ids and labels: which exact images a model was trained on."""
    h = hashlib.sha256(np.ascontiguousarray(ds.tokens[split].astype(np.int64)).tobytes())
    h.update(np.ascontiguousarray(ds.labels[split].astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def check_matches(ds: TokenDataset, vq) -> None:
    """Raise unless the dataset's token ids were made with ``vq``'s codebook."""
    fp, theirs = vq.fingerprint, ds.manifest["vq_fingerprint"]
    if ds.vq_family == vq.family and theirs == fp:
        return
    same = ds.vq_family == vq.family
    by = "a VQ model" if same else f"a {ds.vq_family} model"
    used = f"has {fp}" if same else f"is a {vq.family} ({fp})"
    raise ValueError(
        f"dataset {ds.path} was tokenized by {by} with codebook fingerprint {theirs}, but the model in use "
        f"{used}: its ids mean different embeddings. Re-create the dataset with this model, or load the "
        "model it was made with."
    )


def dataset_bytes(path: str | os.PathLike) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


# --- datasets shipped with the repository (data/default), so every CPU computes the same numbers ----------
# A shipped folder ``X`` has a card ``X.json``: its settings, file sha256s, rebuild command (see ``cache``).


def file_digest(file: str | os.PathLike) -> str:
    return hashlib.sha256(Path(file).read_bytes()).hexdigest()


def file_digests(path: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file of a dataset folder."""
    return {f.name: file_digest(f) for f in sorted(Path(path).iterdir()) if f.is_file()}


def write_dataset_card(path: str | os.PathLike, card: dict) -> Path:
    """Write ``<path>.json`` beside a dataset folder: ``card`` plus the folder's file digests."""
    write_json(card_path(path), {**card, "files": file_digests(path)})
    return card_path(path)


def copy_dataset(ds: TokenDataset, path: str | os.PathLike) -> TokenDataset:
    """Copy a dataset folder to ``path`` (atomically) and return the copy."""
    with atomic_path(path) as tmp:
        shutil.copytree(ds.path, tmp)
    return load_token_dataset(path)


def embedding_loader(
    ds: TokenDataset,
    split: str,
    codebook: torch.Tensor,
    batch_size: int = 128,
    shuffle: bool = False,
    seed: int = 0,
    rows: tuple[int, int] | None = None,
    sampler=None,
    device=None,
):
    """A DataLoader of ``(embeddings (B, D, h, w) float, labels (B,) long, row numbers (B,) long)`` batches.
    ``rows=(start, stop)``: only those rows, in order (a shard). ``sampler`` (e.g. a ``DistributedSampler``)
    chooses the rows instead of ``shuffle``. ``device``: where batches are built."""
    if split not in ds.tokens:
        raise KeyError(f"split {split!r} not in dataset (has {ds.splits})")
    shape = (ds.manifest["n_embed"], ds.manifest["embed_dim"])
    if codebook.shape != shape:
        raise ValueError(f"codebook shape {tuple(codebook.shape)} does not match the dataset's {shape}")
    if sampler is not None and (shuffle or rows is not None):
        raise ValueError("a sampler chooses the rows and their order: give it without shuffle or rows")
    t = torch.from_numpy(ds.tokens[split].astype(np.int64))
    y = torch.from_numpy(ds.labels[split].astype(np.int64))
    if device is not None:
        t, y, codebook = t.to(device), y.to(device), codebook.to(device)
    start, stop = (0, len(y)) if rows is None else rows
    if not 0 <= start <= stop <= len(y):
        raise ValueError(f"rows {start}-{stop} outside the {len(y)} rows of split {split!r}")

    def collate(idx):
        idx = torch.as_tensor(idx)
        i = idx if device is None else idx.to(device)
        return codebook[t[i]].permute(0, 3, 1, 2).contiguous(), y[i], idx

    return torch.utils.data.DataLoader(
        range(start, stop),
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=collate,
    )


# --- the original CORTEX CSV layout ------------------------------------------------------------


def _csv_error(csv_path: Path, line: int, what: str, fix: str) -> ValueError:
    return ValueError(f"{csv_path}, line {line}: {what}. {fix}")


def _csv_rows(csv_path: Path) -> tuple[list[str] | None, list[int], list[list[str]]]:
    """The header, and the data rows (blank lines skipped) with the (1-based) line each starts on."""
    header, lines, rows, last = None, [], [], 0
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            for record in reader:
                start, last = last + 1, reader.line_num
                if record and header is None:
                    header = record
                elif record:
                    lines.append(start)
                    rows.append(record)
        except csv.Error as err:  # in the record after the last one read
            if "end of data" in str(err):
                what = "a quoted field starts in this row and never ends: the file is truncated"
                fix = "Export or copy the CSV again, or delete the incomplete last row."
            else:
                what = f"the row's quoting is malformed ({err})"
                fix = "A quoted field must end with a quote followed by a comma or the end of the line."
            raise _csv_error(csv_path, last + 1, what, fix) from None
    return header, lines, rows


def read_cortex_csv(
    csv_path: str | os.PathLike, grid, n_embed: int, labelled: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a ``filename,label,indices`` CSV (indices: a list literal of ``h*w`` ids, row-major) as
    ``(tokens (N,h,w), labels (N,), filenames (N,))``; with ``labelled=False`` (e.g. neutral-prompt
    generations) only ``indices`` is needed and labels are -1. A malformed row is a ValueError naming the
    file, the row's line and what to fix."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FileNotFoundError(f"CSV not found: {csv_path}")
    header, lines, rows = _csv_rows(csv_path)
    if header is None:
        raise ValueError(
            f"{csv_path}: the file is empty (not even a header line). "
            "Write the header `filename,label,indices` and one row per image."
        )
    for col in ("label", "indices") if labelled else ("indices",):
        if col not in header:
            raise ValueError(f"{csv_path}: missing column {col!r} (has {header})")
    extra = [i for i, r in enumerate(rows) if len(r) > len(header)]
    if extra:
        raise _csv_error(
            csv_path,
            lines[extra[0]],
            f"the row has {len(rows[extra[0]])} fields, the header has {len(header)} ({','.join(header)})",
            'Quote the indices list ("[12, 7, ...]") so its commas do '
            f"not split it, or remove the extra fields ({len(extra)} such row(s)).",
        )
    if not rows:
        raise ValueError(f"{csv_path}: no rows")
    df = pd.DataFrame([r + [""] * (len(header) - len(r)) for r in rows], columns=header)
    n = grid[0] * grid[1]
    missing = np.flatnonzero(df["indices"].to_numpy() == "")
    if len(missing):
        raise _csv_error(
            csv_path,
            lines[missing[0]],
            "the row has no indices field (empty, or the row ends early)",
            f"Each row needs a list of {n} token ids; a row cut short means a truncated file: "
            f"export or copy it again ({len(missing)} such row(s)).",
        )
    body = df["indices"].str.strip().str.strip("[]()")
    lengths = body.str.count(",") + 1 - body.str.rstrip().str.endswith(",").astype(int)
    lengths[body.str.strip() == ""] = 0
    bad = np.flatnonzero(lengths.to_numpy() != n)
    if len(bad):
        raise ValueError(
            f"{csv_path}: line {lines[bad[0]]} has {lengths.iloc[bad[0]]} token ids, expected "
            f"{n} (= {grid[0]}x{grid[1]} grid, row-major); {len(bad)} such row(s). Every row needs "
            "exactly one id per grid position: the row is cut short, or the CSV was made with "
            "another tokenizer (grid) than this one."
        )
    try:
        flat = np.array(",".join(body.str.rstrip(",")).split(","), dtype=np.int64)
    except ValueError:
        ok = body.str.fullmatch(r"\s*[+-]?\d+\s*(,\s*[+-]?\d+\s*)*,?\s*").to_numpy()
        row = int(np.argmin(ok))  # the first bad row
        first = next(
            (t.strip() for t in body.iloc[row].split(",") if not t.strip().lstrip("+-").isdigit()), "?"
        )
        what = f"indices must be integer token ids, got {first!r}"
        fix = f'Write them as a list of integers, e.g. "[12, 7, ...]" ({int((~ok).sum())} such row(s)).'
        raise _csv_error(csv_path, lines[row], what, fix) from None
    tokens = flat.reshape(len(df), *grid)
    out = ((tokens < 0) | (tokens >= n_embed)).any(axis=(1, 2))
    if out.any():
        raise ValueError(
            f"{csv_path}: line {lines[np.argmax(out)]} has a token id outside the codebook [0, {n_embed}): "
            "the CSV was made with another tokenizer (codebook size) than this one."
        )
    names = np.array([f"{csv_path.stem}_{i}" for i in range(len(df))])
    if "filename" in df.columns:
        names = df["filename"].to_numpy()
    if not labelled:
        return tokens, np.full(len(df), -1, dtype=np.int64), names
    numeric = pd.to_numeric(df["label"], errors="coerce")
    bad = np.flatnonzero((numeric.isna() | (numeric != numeric.round())).to_numpy())
    if len(bad):
        raw = df["label"].iloc[bad[0]]
        what = "the row has no label" if raw == "" else f"the label {raw!r} is not an integer class id"
        fix = f"Write each label as an integer 0, 1, ... ({len(bad)} such row(s))."
        raise _csv_error(csv_path, lines[bad[0]], what, fix)
    return tokens, numeric.to_numpy(np.int64), names


def import_cortex_csv(
    out_path, csv_paths: dict[str, str | os.PathLike], vq_meta: dict, class_names: list[str] | None = None
) -> TokenDataset:
    """Import the original's split CSVs (e.g. ``{"train": "train_embeddings.csv", ...}``) into our format.
    Every CSV is checked before anything is written: a malformed row leaves no dataset at ``out_path``."""
    grid, n_embed = tuple(vq_meta["grid"]), int(vq_meta["n_embed"])
    parts = {s: read_cortex_csv(p, grid, n_embed) for s, p in csv_paths.items()}
    if class_names is None:
        n_classes = int(max(y.max() for _, y, _ in parts.values())) + 1
        class_names = [str(i) for i in range(n_classes)]
    return save_token_dataset(
        out_path,
        {s: (t, y) for s, (t, y, _) in parts.items()},
        class_names,
        vq_meta,
        source="imported",
        details={"csv": {s: str(p) for s, p in csv_paths.items()}},
        names={s: n for s, (_, _, n) in parts.items()},
    )


def write_cortex_csv(csv_path: str | os.PathLike, tokens, labels=None, names=None) -> Path:
    """Write token grids ``(N, h, w)`` as a ``filename,label,indices`` CSV (``filename,indices`` without
    ``labels``, as the original's neutral-prompt generations); ``names`` default to ``img_<i>.png``."""
    tokens = np.asarray(tokens)
    columns = {"filename": names if names is not None else [f"img_{i}.png" for i in range(len(tokens))]}
    if labels is not None:
        columns["label"] = labels
    columns["indices"] = [str(r) for r in tokens.reshape(len(tokens), -1).tolist()]  # "[12, 7, ...]"
    with atomic_path(csv_path) as tmp:
        pd.DataFrame(columns).to_csv(tmp, index=False)
    return Path(csv_path)


def export_cortex_csv(ds: TokenDataset, split: str, csv_path: str | os.PathLike) -> Path:
    """Write one split as a ``filename,label,indices`` CSV (names ``<split>_<row>`` where it has none)."""
    names = ds.names.get(split, [f"{split}_{i:06d}" for i in range(len(ds.labels[split]))])
    return write_cortex_csv(csv_path, ds.tokens[split], ds.labels[split], names)


# --- real images -------------------------------------------------------------------------------


def read_image_folder(root: str | os.PathLike, size: int, channels: int = 3):
    """An ImageFolder-layout tree (one sub-folder per class) as uint8 ``(N, C, size, size)``, labels,
    class names and file names. Images are resized (shorter side) and centre-cropped to ``size``."""
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
            resized = (max(size, round(im.width * scale)), max(size, round(im.height * scale)))
            im = im.resize(resized, Image.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
            images.append(arr.reshape(size, size, -1).transpose(2, 0, 1))
            labels.append(c)
            names.append(f"{name}/{p.name}")
    return np.stack(images), np.array(labels), classes, np.array(names)
