import numpy as np
import pytest
import torch

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
