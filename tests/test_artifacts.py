import json
import subprocess
import sys

import pytest
import torch

from cortex_run import artifacts, checkpoints
from cortex_utils import iem as iemlib


def test_metrics_and_registry_merge_and_name_a_damaged_file(tmp_path, capsys):
    artifacts.record_metrics(tmp_path, a=1.5)
    artifacts.record_metrics(tmp_path, b=torch.tensor(2.0), a=3)
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 3, "b": 2.0}
    with pytest.raises(TypeError, match="scalar"):
        artifacts.record_metrics(tmp_path, c=[1, 2])
    assert artifacts.note_trained(tmp_path, "IEM 1") == 1 and artifacts.note_trained(tmp_path, "IEM 2") == 2
    assert artifacts.read_metrics(tmp_path)["models_trained_in_run"] == 2
    assert "trained in this run: IEM 2" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no 'vq' model registered"):
        artifacts.registered(tmp_path, "vq")
    artifacts.register(tmp_path, "vq", checkpoint=tmp_path / "x.safetensors")
    assert artifacts.registered(tmp_path, "vq")["checkpoint"].endswith("x.safetensors")
    for name in ("metrics.json", "registry.json"):  # half-written
        (tmp_path / name).write_text((tmp_path / name).read_text()[:-7])
    for read in (artifacts.read_metrics, lambda d: artifacts.record_metrics(d, a=1)):
        with pytest.raises(ValueError, match=r"metrics\.json is not valid JSON"):
            read(tmp_path)
    with pytest.raises(ValueError, match=r"registry\.json is not valid JSON"):
        artifacts.registered(tmp_path, "vq")


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
    for key in ("state_dict", "model"):  # Lightning's checkpoints, torchvision's training scripts
        torch.save({key: sd, "epoch": 3}, tmp_path / "wrapped.pt")
        assert torch.equal(checkpoints.load_state_dict(tmp_path / "wrapped.pt")["w"], sd["w"])
    torch.save({"not": "weights"}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        checkpoints.load_state_dict(tmp_path / "odd.pt")
    for f in (p, tmp_path / "plain.pt"):  # truncated
        f.write_bytes(f.read_bytes()[:-20])
        with pytest.raises(ValueError, match=f"{f.name} cannot be read .*damaged or truncated"):
            checkpoints.load_state_dict(f)
    (tmp_path / "m.json").write_text('{"seed": ')
    with pytest.raises(ValueError, match=r"m\.json is not valid JSON"):
        checkpoints.read_card(p)
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="card"):
        checkpoints.read_card(p)


def test_iem_round_trip_checks_its_spec_and_names_a_truncated_file(tmp_path):
    m = iemlib.build_iem(3, 6, (4, 4), 5, width=16).eval()
    p = checkpoints.save_iem(m, tmp_path / "iem.safetensors", card={"epochs": 1})
    again = checkpoints.load_iem(p, expect={"arch": 3, "in_channels": 6, "grid": (4, 4)})
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(again(x), m(x))
    with pytest.raises(ValueError, match="arch = 'resnet_se', expected 'vgg'"):
        checkpoints.load_iem(p, expect={"arch": 1})
    with pytest.raises(ValueError, match="in_channels = 6, expected 32"):
        checkpoints.load_iem(p, expect={"in_channels": 32})
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"iem\.safetensors cannot be read .*truncated"):
        checkpoints.load_iem(p)


def test_loading_an_iem_imports_no_model_library(tmp_path):
    """``checkpoints`` is a leaf: saving and loading an IEM imports neither taming, pytorch_lightning nor
    vector_quantize_pytorch (a fresh interpreter: this test session has imported them elsewhere)."""
    code = (
        "import sys\n"
        "from cortex_run import checkpoints\nfrom cortex_utils import iem\n"
        f"p = checkpoints.save_iem(iem.build_iem(1, 4, (4, 4), 2, width=8), "
        f"{str(tmp_path / 'i.safetensors')!r}, card={{}})\n"
        "checkpoints.load_iem(p, expect={'in_channels': 4})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'taming', 'pytorch_lightning', 'lightning', "
        "'vector_quantize_pytorch'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
