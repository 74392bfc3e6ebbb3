import json

import pytest
import torch

from cortex_utils import artifacts


def test_record_metrics_merges_flat_values(tmp_path):
    artifacts.record_metrics(tmp_path, a=1.5)
    artifacts.record_metrics(tmp_path, b=torch.tensor(2.0), a=3)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 3, "b": 2.0}
    with pytest.raises(TypeError, match="scalar"):
        artifacts.record_metrics(tmp_path, c=[1, 2])


def test_registry(tmp_path):
    with pytest.raises(FileNotFoundError, match="no 'vq' model registered"):
        artifacts.registered(tmp_path, "vq")
    artifacts.register(tmp_path, "vq", checkpoint=tmp_path / "x.safetensors")
    assert artifacts.registered(tmp_path, "vq")["checkpoint"].endswith("x.safetensors")


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with artifacts.atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_weights_card_and_plain_state_dict(tmp_path):
    sd = {"w": torch.arange(4.0)}
    p = artifacts.save_weights(sd, tmp_path / "m.safetensors", card={"seed": 1})
    assert artifacts.read_card(p) == {"seed": 1}
    assert torch.equal(artifacts.load_state_dict(p)["w"], sd["w"])
    torch.save(sd, tmp_path / "plain.pt")
    assert torch.equal(artifacts.load_state_dict(tmp_path / "plain.pt")["w"], sd["w"])
    torch.save({"not": "weights"}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        artifacts.load_state_dict(tmp_path / "odd.pt")
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="card"):
        artifacts.read_card(p)
