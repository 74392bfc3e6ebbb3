import json

import numpy as np
import pandas as pd
import pytest
import torch

from cortex_run import datasets as tokds
from cortex_utils import vq as vqlib

META = {
    "vq_fingerprint": "abc123",
    "n_embed": 32,
    "embed_dim": 8,
    "grid": [4, 4],
    "image_size": 16,
    "image_channels": 3,
}
CLASSES = ["a", "b", "c"]


def _splits(seed=0, n=30):
    rng = np.random.default_rng(seed)
    return {s: (rng.integers(0, 32, (n, 4, 4)), np.arange(n) % 3) for s in ("train", "val", "test")}


def test_round_trip_and_compact_dtype(tmp_path):
    splits = _splits()
    ds = tokds.save_token_dataset(tmp_path / "ds", splits, CLASSES, META, source="generated")
    assert ds.tokens["train"].dtype == np.uint8 and ds.labels["train"].dtype == np.uint8
    again = tokds.load_token_dataset(tmp_path / "ds")
    for s, (t, y) in splits.items():
        assert (again.tokens[s] == t).all() and (again.labels[s] == y).all()
    assert again.manifest["splits"] == {"train": 30, "val": 30, "test": 30}
    per_image = tokds.dataset_bytes(tmp_path / "ds") / 90
    assert per_image <= 4 * 16 + 40  # ids + label + amortised headers/manifest of a tiny dataset


def test_large_codebook_uses_uint16(tmp_path):
    meta = {**META, "n_embed": 16384}
    t = np.full((3, 4, 4), 16383)
    ds = tokds.save_token_dataset(tmp_path / "ds", {"train": (t, np.arange(3))}, CLASSES, meta, source="x")
    assert ds.tokens["train"].dtype == np.uint16 and int(ds.tokens["train"].max()) == 16383


def test_fingerprint_mismatch_is_refused(tmp_path, tiny_vq):
    meta = vqlib.vq_meta(tiny_vq)
    rng = np.random.default_rng(0)
    split = (rng.integers(0, 32, (6, 8, 8)), np.arange(6) % 3)
    tokds.save_token_dataset(tmp_path / "ds", {"train": split}, CLASSES, meta, source="generated")
    tokds.load_token_dataset(tmp_path / "ds", vq=tiny_vq)  # same model: fine
    with torch.no_grad():
        tiny_vq.model.quantize.embedding.weight.mul_(2)
    with pytest.raises(ValueError, match="fingerprint"):
        tokds.load_token_dataset(tmp_path / "ds", vq=tiny_vq)


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            lambda s: {**s, "val": (s["val"][0][:, :3], s["val"][1])},
            r"val: token grids must have shape \(N, 4, 4\)",
        ),
        (
            lambda s: {
                **s,
                "test": (np.where(np.arange(16).reshape(4, 4) == 5, 32, s["test"][0]), s["test"][1]),
            },
            r"test: row 0 has a token id outside \[0, 32\)",
        ),
        (lambda s: {**s, "train": (s["train"][0], s["train"][1] % 2)}, r"no training images: \['c'\]"),
        (lambda s: {**s, "train": (s["train"][0], s["train"][1][:-1])}, "30 token grids but 29 labels"),
        (lambda s: {"val": s["val"]}, "needs a 'train' split"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        tokds.save_token_dataset(tmp_path / "ds", bad(_splits()), CLASSES, META, source="generated")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_old_dataset(tmp_path, monkeypatch):
    tokds.save_token_dataset(tmp_path / "ds", _splits(0), CLASSES, META, source="generated")
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_save(*a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        tokds.save_token_dataset(tmp_path / "ds", _splits(1), CLASSES, META, source="generated")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no partial folder left
    ds = tokds.load_token_dataset(tmp_path / "ds")
    assert (ds.tokens["train"] == _splits(0)["train"][0]).all()  # the old one, intact


def test_embedding_loader_is_codebook_lookup(tmp_path):
    ds = tokds.save_token_dataset(tmp_path / "ds", _splits(), CLASSES, META, source="generated")
    cb = torch.randn(32, 8)
    emb, y, rows = next(iter(tokds.embedding_loader(ds, "train", cb, batch_size=7, shuffle=True)))
    assert emb.shape == (7, 8, 4, 4) and y.shape == (7,)
    t = torch.from_numpy(ds.tokens["train"][rows.numpy()].astype(np.int64))
    assert torch.equal(emb, cb[t].permute(0, 3, 1, 2))
    assert torch.equal(y, torch.from_numpy(ds.labels["train"][rows.numpy()].astype(np.int64)))
    with pytest.raises(ValueError, match="codebook shape"):
        tokds.embedding_loader(ds, "train", torch.randn(16, 8))


def _write_csv(path, rows):
    pd.DataFrame(rows, columns=["filename", "label", "indices"]).to_csv(path, index=False)


def test_cortex_csv_import_export_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f"img_{i}.npy", i % 3, str(list(map(int, rng.integers(0, 32, 16))))) for i in range(9)]
    _write_csv(tmp_path / "train_embeddings.csv", rows)
    _write_csv(tmp_path / "test_embeddings.csv", rows[:4])
    ds = tokds.import_cortex_csv(
        tmp_path / "ds",
        {"train": tmp_path / "train_embeddings.csv", "test": tmp_path / "test_embeddings.csv"},
        META,
    )
    assert ds.class_names == ["0", "1", "2"] and ds.manifest["source"] == "imported"
    assert ds.tokens["train"][2].ravel().tolist() == json.loads(rows[2][2])
    assert ds.names["train"][3] == "img_3.npy"
    out = tokds.export_cortex_csv(ds, "train", tmp_path / "out.csv")
    back = pd.read_csv(out)
    assert back["filename"].tolist() == [r[0] for r in rows]
    assert back["indices"].tolist() == [r[2] for r in rows]


def test_csv_row_with_wrong_length_names_the_line(tmp_path):
    rows = [("a", 0, str(list(range(16)))), ("b", 1, str(list(range(15)))), ("c", 2, str(list(range(16))))]
    _write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(ValueError, match=r"line 3 has 15 token ids, expected 16"):
        tokds.read_cortex_csv(tmp_path / "t.csv", (4, 4), 32)
    assert not (tmp_path / "ds").exists()


def test_csv_id_beyond_codebook_names_the_line(tmp_path):
    rows = [("a", 0, str(list(range(16)))), ("b", 1, str([40] + list(range(15))))]
    _write_csv(tmp_path / "t.csv", rows)
    with pytest.raises(ValueError, match=r"line 3 has a token id outside the codebook \[0, 32\)"):
        tokds.import_cortex_csv(tmp_path / "ds", {"train": tmp_path / "t.csv"}, META)
    assert not (tmp_path / "ds").exists()


def test_csv_missing_column(tmp_path):
    pd.DataFrame({"filename": ["a"], "label": [0]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match="missing column 'indices'"):
        tokds.read_cortex_csv(tmp_path / "t.csv", (4, 4), 32)


def test_image_folder(tmp_path):
    from PIL import Image

    for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40, 30), colour).save(tmp_path / "imgs" / c / f"{i}.png")
    images, labels, classes, names = tokds.read_image_folder(tmp_path / "imgs", 16)
    assert images.shape == (4, 3, 16, 16) and images.dtype == np.uint8
    assert classes == ["cat", "dog"] and labels.tolist() == [0, 0, 1, 1]
    assert images[0, 0].min() == 255 and images[2, 2].min() == 255 and names[2] == "dog/0.png"
    (tmp_path / "imgs" / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        tokds.read_image_folder(tmp_path / "imgs", 16)


# --- malformed CSV rows -----------------------------------------------------------------------------------
# the error names the file, the editor line (1-based) and what to fix; nothing is written


def _ids(k):
    return '"' + str(list(range(k))) + '"'


def _import_fails(tmp_path, text, match):
    """Importing a CSV with ``text`` fails with a ValueError matching ``match`` and leaves nothing behind."""
    csv = tmp_path / "train.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        tokds.import_cortex_csv(tmp_path / "ds", {"train": csv}, META)
    assert str(csv) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]  # no dataset, no .partial folder
    return str(info.value)


def test_csv_truncated_inside_the_indices_names_the_line(tmp_path):
    msg = _import_fails(
        tmp_path,
        f'filename,label,indices\na,0,{_ids(16)}\n\nb,1,"[0, 1, 2, 3',
        r"line 4: a quoted field starts in this row and never ends: the file is truncated",
    )
    assert "copy the CSV again" in msg


def test_csv_row_without_indices_field_names_the_line(tmp_path):
    _import_fails(
        tmp_path,
        f"filename,label,indices\na,0,{_ids(16)}\nb,1\nc,2,{_ids(16)}\n",
        r"line 3: the row has no indices field",
    )


def test_csv_row_with_a_field_too_many_names_the_line(tmp_path):
    # an unquoted list: its commas split it into fields (pandas' "Error tokenizing data")
    msg = _import_fails(
        tmp_path,
        f"filename,label,indices\n\na,0,{_ids(16)}\nb,1,[0, 1]\n",
        r"line 4: the row has 4 fields, the header has 3",
    )
    assert "Quote the indices list" in msg


def test_csv_wrong_number_of_ids_counts_lines_as_an_editor(tmp_path):
    # a blank line and an indices list spread over two lines: the bad row starts on line 6
    text = (
        f'filename,label,indices\na,0,{_ids(16)}\n\nb,1,"[0, 1, 2, 3,\n'
        ' 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]"\n'
        f"c,2,{_ids(15)}\n"
    )
    _import_fails(tmp_path, text, r"line 6 has 15 token ids, expected 16 \(= 4x4 grid")


@pytest.mark.parametrize("bad, shown", [("1.5", "'1.5'"), ("x", "'x'")])
def test_csv_non_integer_id_names_the_line_and_the_value(tmp_path, bad, shown):
    ids = ", ".join(["0", bad] + [str(i) for i in range(2, 16)])
    _import_fails(
        tmp_path,
        f'filename,label,indices\na,0,{_ids(16)}\nb,1,"[{ids}]"\n',
        rf"line 3: indices must be integer token ids, got {shown}",
    )


@pytest.mark.parametrize(
    "label, what", [("cat", "the label 'cat' is not an integer class id"), ("", "the row has no label")]
)
def test_csv_bad_label_names_the_line(tmp_path, label, what):
    _import_fails(
        tmp_path, f"filename,label,indices\na,0,{_ids(16)}\nb,{label},{_ids(16)}\n", rf"line 3: {what}"
    )


def test_csv_empty_file(tmp_path):
    _import_fails(tmp_path, "", r"the file is empty")


def test_failed_csv_import_keeps_the_previous_dataset(tmp_path):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(f"filename,label,indices\na,0,{_ids(16)}\nb,1,{_ids(16)}\nc,2,{_ids(16)}\n")
    bad.write_text(f"filename,label,indices\na,0,{_ids(16)}\nb,1\n")
    tokds.import_cortex_csv(tmp_path / "ds", {"train": good}, META)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    with pytest.raises(ValueError, match=r"bad.csv, line 3"):
        tokds.import_cortex_csv(tmp_path / "ds", {"train": good, "test": bad}, META)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    assert not list(tmp_path.glob("*.partial"))
