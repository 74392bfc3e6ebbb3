import shutil

import numpy as np
import pytest
import torch
from test_own_images import shape_folder  # the shapes the own-images test makes

from cortex_run import digits, evaluators
from cortex_utils import evaluation


def test_default_data_is_stratified_deterministic_and_coloured():
    a, b = digits.load_digits(seed=0), digits.load_digits(seed=0)
    assert [len(a[s]["labels"]) for s in digits.SPLITS] == [3500, 750, 750]
    for s in digits.SPLITS:
        assert (np.bincount(a[s]["labels"]) == len(a[s]["labels"]) // 10).all()
        assert (a[s]["images"] == b[s]["images"]).all()
    x = a["train"]["images"]
    assert x.shape[1:] == (3, 32, 32) and x.dtype == np.uint8
    assert len(np.unique(a["train"]["colour"])) == len(digits.PALETTE)
    assert not set(a["train"]["source_index"]) & set(a["test"]["source_index"])
    red = a["train"]["images"][a["train"]["colour"] == list(digits.PALETTE).index("red")]
    assert red[:, 0].max() > 200 and red[:, 1].max() < 60


def test_model_input_range():
    x = digits.to_model_input(np.array([[[[0, 255]]]], dtype=np.uint8))
    assert x.tolist() == [[[[-1.0, 1.0]]]]
    assert (digits.to_uint8(x) == np.array([[[[0, 255]]]])).all()


@pytest.mark.parametrize("arch", evaluators.EVALUATORS)
def test_evaluator_checkpoint_round_trip_and_size_check(arch, tmp_path):
    from cortex_run.checkpoints import save_weights

    model = evaluators.build_evaluator(arch)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    model(x)
    model.eval()
    p = save_weights(
        model.state_dict(), tmp_path / "e.safetensors", card={"arch": arch, "image_size": 32, "n_classes": 10}
    )
    again = evaluators.load_evaluator(p, arch)
    torch.testing.assert_close(evaluation.predict_logits(again, x), evaluation.predict_logits(model, x))
    with pytest.raises(ValueError, match="trained on 32px"):
        evaluators.load_evaluator(p, arch, image_size=256)
    other = [a for a in evaluators.EVALUATORS if a != arch][0]
    with pytest.raises(ValueError, match=f"holds a '{arch}' evaluator"):
        evaluators.load_evaluator(p, other)


def test_unknown_evaluator():
    with pytest.raises(ValueError, match="choose one of"):
        evaluators.build_evaluator("vit")


def test_images_for_run_reads_splits_and_names_a_folder(tmp_path):
    """Issue 30: a folder of K classes, another image size, split 70/15/15 within each class as the digits,
    resized to the tokenizer's input; too few images in a class, or one class, is refused by name."""
    from cortex_run import prepare

    meta = {"image_size": 32, "image_channels": 3}
    root = shape_folder(tmp_path / "shapes", per_class=20, size=40)  # 40 px, resized to 32
    data, names = prepare.images_for_run(str(root), meta, seed=0)
    assert names == ["circle", "square", "triangle"]
    assert [len(data[s]["labels"]) for s in digits.SPLITS] == [42, 9, 9]
    for s in digits.SPLITS:
        assert data[s]["images"].shape[1:] == (3, 32, 32) and data[s]["images"].dtype == np.uint8
        assert (np.bincount(data[s]["labels"], minlength=3) == len(data[s]["labels"]) // 3).all()
        assert all(
            n.split("/")[0] == names[y] for n, y in zip(data[s]["names"], data[s]["labels"], strict=True)
        )
    assert not set(data["train"]["names"]) & set(data["test"]["names"])
    digits_data, digit_names = prepare.images_for_run("", meta, seed=0)
    assert digit_names == digits.CLASS_NAMES and "gray" in digits_data["train"]
    for extra in sorted((root / "square").iterdir())[5:]:
        extra.unlink()
    with pytest.raises(ValueError, match=r"square \(5\)"):
        prepare.images_for_run(str(root), meta, seed=0)
    for cls in ("square", "triangle"):
        shutil.rmtree(root / cls)
    with pytest.raises(ValueError, match="1 class folders"):
        prepare.images_for_run(str(root), meta, seed=0)


def test_evaluators_trained_on_a_folder_judge_its_classes(tmp_path, capsys):
    """With a folder, notebook 02's evaluators are trained here on its classes (not the shipped digit ones),
    saved under the run, registered with their held-out accuracy and floor, recorded in metrics.json; the
    judges the later notebooks load are those, and one below its floor is called a weak judge."""
    import json

    from cortex_run import prepare
    from cortex_run.artifacts import register

    root = shape_folder(tmp_path / "shapes", per_class=30)
    data, names = prepare.images_for_run(str(root), {"image_size": 32, "image_channels": 3}, seed=0)
    run = tmp_path / "run"
    judges = prepare.evaluators_for_run(
        run, data, retrain=False, evaluator={"steps": 50, "floor": 0.8}, seed=0
    )
    registry = json.loads((run / "registry.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    for arch, model in judges.items():
        entry = registry[f"evaluator_{arch}"]
        assert entry["checkpoint"].startswith(str(run)) and entry["floor"] == 0.8
        assert entry["test_accuracy"] == metrics[f"evaluator_{arch}_test_accuracy"]
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    assert max(metrics[f"evaluator_{a}_test_accuracy"] for a in judges) > 0.5  # shapes are easy; chance 1/3
    capsys.readouterr()
    register(run, "evaluator_cnn", **{**registry["evaluator_cnn"], "test_accuracy": 0.5})  # below the floor
    loaded = evaluators.load_run_evaluators(run, 32, 3)
    assert set(loaded) == set(judges)
    out = capsys.readouterr().out
    assert "weak judge: the cnn evaluator classifies 50.0% of the held-out test images right" in out
    assert "resnet" not in out or registry["evaluator_resnet"]["test_accuracy"] < 0.8
    with pytest.raises(ValueError, match="no evaluator fits this data"):
        evaluators.load_run_evaluators(run, 32, 10)  # the digits' class count: these judges do not fit
