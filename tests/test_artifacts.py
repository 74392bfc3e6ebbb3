import json

import pytest
import torch

from cortex_run import artifacts, checkpoints


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
    p = checkpoints.save_weights(sd, tmp_path / "m.safetensors", card={"seed": 1})
    assert checkpoints.read_card(p) == {"seed": 1}
    assert torch.equal(checkpoints.load_state_dict(p)["w"], sd["w"])
    torch.save(sd, tmp_path / "plain.pt")
    assert torch.equal(checkpoints.load_state_dict(tmp_path / "plain.pt")["w"], sd["w"])
    torch.save({"not": "weights"}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        checkpoints.load_state_dict(tmp_path / "odd.pt")
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="card"):
        checkpoints.read_card(p)


def test_loading_an_iem_imports_no_model_library(tmp_path):
    """``checkpoints`` is a leaf: saving and loading an IEM (and the checkpoint helpers themselves) imports
    neither taming, pytorch_lightning nor vector_quantize_pytorch (a fresh interpreter: this test session has
    imported them elsewhere)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cortex_run import checkpoints\nfrom cortex_utils import iem\n"
        f"p = iem.save_iem(iem.build_iem(1, 4, (4, 4), 2, width=8), {str(tmp_path / 'i.safetensors')!r}, "
        f"card={{}})\n"
        "iem.load_iem(p, expect={'in_channels': 4})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'taming', 'pytorch_lightning', 'lightning', "
        "'vector_quantize_pytorch'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
