"""The device plumbing, tested on the CPU alone (no CUDA needed): device names resolved or refused by name, a
notebook's ``device`` parameter, device_check's comparison and report, and every stage of the method with its
model on ``torch.device("meta")`` and its data on the host.

A meta tensor has a shape and no values. A library loop that moves each batch to its model's device runs the
whole computation on meta and fails only where it reads a value back to the host (``READ_BACK``), or returns;
a loop that forgets a move fails at once: "Tensor on device cpu is not on the expected device meta!" (or the
reverse, or "found at least two devices"). So each stage below must end in a read-back or return results
without a tensor left on meta: the moves a CUDA run needs are in place.
"""

import contextlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cortex_run import device as devlib
from cortex_run import generation as gen
from cortex_run.notebook import check_parameters, parameter_defaults
from cortex_run.pipeline import load_preset
from cortex_utils import evaluation as ev
from cortex_utils import iem as iemlib
from cortex_utils import optimization as opt
from cortex_utils import sanity
from cortex_utils import tis as tislib
from cortex_utils import vq as vqlib
from cortex_utils.tis import Noise

ROOT = Path(__file__).resolve().parents[1]
META = torch.device("meta")
READ_BACK = ("Cannot copy out of meta tensor", "cannot be called on meta tensors")
# operators whose output size depends on the values (Captum's occlusion calls torch.unique on its feature
# mask): meta has no kernel for them, so they stop the computation as a read-back does
DATA_DEPENDENT = ("aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::nonzero")
GRID = (8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")


# --- cortex_run.device ---------------------------------------------------------------------------------


def test_auto_resolves_to_what_this_machine_has():
    want = "cuda:0" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert devlib.resolve("auto") == want
    assert devlib.resolve("cpu") == "cpu"


@pytest.mark.parametrize("name", ["gpu", "cuda:1", "tpu", "cpu:1", ""])
def test_an_unknown_or_absent_device_is_refused_by_name(name):
    if name == "cuda:1" and torch.cuda.device_count() > 1:
        pytest.skip("this machine has a second CUDA device")
    with pytest.raises(ValueError, match=f"device.*{name!r}"):
        devlib.resolve(name)


def test_a_device_that_is_not_a_string_is_refused():
    with pytest.raises(ValueError, match="parameter device must be a string"):
        devlib.resolve(0)


def test_memory_figures_on_the_cpu():
    assert devlib.free_memory_mb("cpu") is None  # the CPU keeps passes.MEMORY_MB
    assert devlib.peak_mb("cpu") > 0  # this process's peak resident set
    devlib.reset_peak("cpu")
    devlib.synchronize("cpu")


# --- the notebooks' device parameter ------------------------------------------------------------------


def test_check_parameters_resolves_the_device_in_the_namespace():
    ns = {"device": "auto"}
    params = check_parameters(ns, "03_train_iem")
    assert ns["device"] == params["device"] == devlib.resolve("auto")


@pytest.mark.parametrize("name", ["tpu", "gpu"])
def test_check_parameters_refuses_an_unknown_device_by_name(name):
    with pytest.raises(ValueError, match=f"device.*{name!r}"):
        check_parameters({"device": name}, "03_train_iem")


def test_every_notebook_of_the_smoke_preset_has_a_device_parameter():
    lacking = [
        nb for nb in load_preset("smoke")["notebooks"] if parameter_defaults(nb).get("device") != '"auto"'
    ]
    assert not lacking, f"no parameter device = 'auto' in {lacking}"


# --- benchmarks/device_check.py ------------------------------------------------------------------------


@pytest.fixture
def device_check(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module("device_check")
    monkeypatch.setattr(module, "RUNS", tmp_path)  # nothing under runs/ is touched
    return module


CHECKED = {
    "acc": {"value": 0.9, "tolerance": 0.01, "kind": "accuracy_500"},
    "method": {"value": "smoothgrad", "tolerance": 0, "kind": "exact"},
    "device": {"value": "cpu", "tolerance": 0, "kind": "exact"},
    "not_in_this_preset": {"value": 1.0, "tolerance": 0.1, "kind": "x"},
}
CPU = {"acc": 0.5, "method": "smoothgrad", "device": "cpu", "smoke_only": 3.0}


def test_device_check_compares_within_the_expected_tolerances(device_check):
    near = {**CPU, "acc": 0.509, "device": "cuda:0", "smoke_only": 99.0}
    assert device_check.compare(CPU, near, CHECKED) == ([], 2, 0)  # device itself is not compared
    far = {**near, "acc": 0.52}
    lines, n, off = device_check.compare(CPU, far, CHECKED)
    assert (n, off) == (2, 1) and lines[0].startswith("OFF     acc: cpu 0.5, device 0.52")
    other = {**near, "method": "gradient"}
    assert device_check.compare(CPU, other, CHECKED)[2] == 1
    lacking = {k: v for k, v in near.items() if k != "acc"}
    lines, _, off = device_check.compare(CPU, lacking, CHECKED)
    assert off == 1 and lines[0].startswith("MISSING acc")


def _fake_runs(device_check, monkeypatch, device_metrics, resolved="cuda:0"):
    seconds = {"cpu": 40.0}
    realshape = {"realshape_tis_images_per_s": 900.0, "realshape_iem_step_seconds": 0.05}
    realshape |= {"realshape_peak_mb": 2048.0, "realshape_paper_hours": 3.5}

    def run(preset, device, run_dir):
        if preset == "real-shape":
            return 60.0, realshape, "log"
        return seconds.get(device, 10.0), CPU if device == "cpu" else device_metrics, "log"

    monkeypatch.setattr(device_check, "run_pipeline", run)
    monkeypatch.setattr(device_check, "available", lambda name: (resolved, "" if resolved else "no CUDA"))


def test_device_check_report_with_a_device(device_check, monkeypatch, capsys, tmp_path):
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"checked": CHECKED}))
    _fake_runs(device_check, monkeypatch, {**CPU, "device": "cuda:0"})
    assert device_check.main(["--expected", str(expected)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("device=cuda:0 device_equal=1 device_speedup=4.00 ")
    assert "realshape_tis_images_per_s=900" in last and "realshape_paper_hours=3.5" in last
    _fake_runs(device_check, monkeypatch, {**CPU, "acc": 0.6})
    assert device_check.main(["--no-real-shape", "--expected", str(expected)]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "device_equal=0" in last and "keys_off=1" in last and "realshape" not in last


def test_device_check_without_the_device_runs_the_cpu_half_and_says_what_it_could_not(
    device_check, monkeypatch, capsys
):
    _fake_runs(device_check, monkeypatch, None, resolved=None)
    assert device_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == (
        "device=cpu cuda=absent not_run=cuda_smoke,comparison,speedup,real_shape_cuda smoke_cpu_seconds=40.0"
    )
    assert "no CUDA" in out[0]


# --- every stage with its model on the meta device ------------------------------------------------------


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


@pytest.fixture(autouse=True)
def meta_runs(monkeypatch):
    """Counts the module calls that get a meta input (``ran[0]``); a disabled ``torch.autocast`` on meta is a
    no-op, as on every device (autocast has no meta backend and refuses the device type even when disabled;
    enabled, it still refuses)."""
    ran = [0]

    def count(module, args):
        ran[0] += any(isinstance(a, torch.Tensor) and a.device.type == "meta" for a in args)

    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        if device_type == "meta" and not kwargs.get("enabled", True):
            return contextlib.nullcontext()
        return real(device_type, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    yield ran
    handle.remove()


def on_meta(ran, fn, *args, must_run=True, host_results=True, **kwargs):
    """Call a library function whose model sits on meta, its inputs on the host: it must fail only where it
    reads a value back (or calls a ``DATA_DEPENDENT`` operator; returned: the message), or return with no
    tensor left on meta (returned: None).
    Anything else (a device mismatch) fails the test, chained to the library's traceback. ``must_run``: a
    module must have run on meta before (else the read-back came first and the test exercised nothing).
    ``host_results`` False: a function documented to return its results on the model's device."""
    ran[0] = 0
    try:
        out, message = fn(*args, **kwargs), None
    except (RuntimeError, NotImplementedError) as err:
        no_meta_kernel = "with Meta tensors" in str(err) and any(op in str(err) for op in DATA_DEPENDENT)
        if not any(s in str(err) for s in READ_BACK) and not no_meta_kernel:
            raise AssertionError(f"a move is missing: {type(err).__name__}: {err}") from err
        out, message = None, str(err)
    left = [tuple(t.shape) for t in _tensors(out) if t.device.type == "meta"]
    assert not left or not host_results, (
        f"results left on the model's device, not brought back to the host: {left}"
    )
    assert ran[0] or not must_run, f"{fn.__name__} stopped before any module ran on meta: {message}"
    return message


@pytest.fixture
def checks_on_meta(monkeypatch):
    """``tis.check_batch`` without its two value checks on a meta batch (finite embeddings, targets among the
    classes: a read-back each, on CUDA a harmless wait), so the attribution passes behind it run on meta."""
    real = tislib.check_batch

    def check_batch(model, embeddings, target, where="batch"):
        if embeddings.device.type != "meta":
            return real(model, embeddings, target, where)
        real(model, torch.zeros(embeddings.shape), torch.zeros(len(embeddings)), where)  # shapes, eval mode
        return torch.as_tensor(target).long().reshape(-1).to(embeddings.device)

    monkeypatch.setattr(tislib, "check_batch", check_batch)


def _iem(arch, in_ch=6, n_classes=3):
    with META:
        return iemlib.build_iem(arch, in_ch, GRID, n_classes, width=8).eval()


def _batches(n=8, batch=4, in_ch=6, n_classes=3):
    """Host batches of ``(embeddings, labels, rows)``, as a token-dataset loader yields them."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, in_ch, *GRID, generator=g), torch.arange(n) % n_classes
    return [
        (x[i : i + batch], y[i : i + batch], torch.arange(i, min(i + batch, n))) for i in range(0, n, batch)
    ]


ARCHS = pytest.mark.parametrize("arch", [1, 2, 3, 4], ids=lambda a: iemlib.ARCHITECTURES[a])


@ARCHS
def test_iem_training_on_meta(arch, meta_runs):
    on_meta(meta_runs, iemlib.train_iem, _iem(arch), _batches(), _batches(), iemlib.Training(epochs=1))


@ARCHS
def test_iem_prediction_and_evaluation_on_meta(arch, meta_runs):
    on_meta(meta_runs, iemlib.predict, _iem(arch), _batches())
    on_meta(meta_runs, iemlib.evaluate_iem, _iem(arch), _batches())


@ARCHS
@pytest.mark.parametrize("draws", tislib.DRAWS)
def test_smoothgrad_on_meta(arch, draws, checks_on_meta, meta_runs):
    x, y, _ = _batches()[0]
    on_meta(meta_runs, tislib.smoothgrad, _iem(arch), x, y, Noise(2, draws=draws), host_results=False)


def _options(method):
    return tislib.method_options(method, noise=Noise(2), steps=2)  # zero baselines: None


@pytest.mark.parametrize("method", list(tislib.METHODS))
def test_every_attribution_method_on_meta(method, checks_on_meta, meta_runs):
    x, y, _ = _batches()[0]
    on_meta(meta_runs, tislib.attribute, _iem(1), x, y, method, **_options(method))


@pytest.mark.parametrize("method", list(tislib.METHODS))
def test_dataset_tis_on_meta(method, checks_on_meta, meta_runs):
    on_meta(meta_runs, tislib.dataset_tis, _iem(1), _batches(), 8, method, **_options(method))


def test_attribute_tokens_on_meta(checks_on_meta, meta_runs):
    g = torch.Generator().manual_seed(0)
    codebook, tokens = torch.randn(16, 6, generator=g), torch.randint(0, 16, (5, *GRID), generator=g)
    targets = np.arange(5) % 3
    on_meta(
        meta_runs, tislib.attribute_tokens, _iem(1), codebook, tokens, targets, noise=Noise(2), batch_size=2
    )


# --- masking: the VQ decoder and the evaluators on meta ---------------------------------------------------


def _evaluator(device=META, n_classes=3, size=16):
    torch.manual_seed(0)
    with torch.device(device):
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * size * size, n_classes)).eval()


def _grids(n=6, k=32):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, k, (n, *GRID))
    tokens[:, :, :2] = 5  # a frequent background id
    return tokens, np.arange(n) % 3, rng.random((n, *GRID)).astype(np.float32)


def _meta_vq(tiny_vq):
    tiny_vq.model.to(META)
    return tiny_vq


def test_predict_logits_and_target_scores_on_meta(meta_runs):
    images, targets = torch.rand(5, 3, 16, 16) * 2 - 1, np.arange(5) % 3
    on_meta(meta_runs, ev.predict_logits, _evaluator(), images, batch_size=2)
    on_meta(
        meta_runs, ev.target_scores, {"a": _evaluator(), "b": _evaluator()}, images, targets, batch_size=2
    )


def test_vq_decode_on_meta(tiny_vq, meta_runs):
    tokens, _, _ = _grids()
    vq = _meta_vq(tiny_vq)
    on_meta(meta_runs, vqlib.decode, vq, torch.as_tensor(tokens), batch_size=4)
    on_meta(meta_runs, vqlib.decode, vq, torch.randn(5, 8, *GRID), batch_size=2)  # embeddings, not ids


def test_vq_encode_on_meta(tiny_vq, meta_runs):
    on_meta(meta_runs, vqlib.encode, _meta_vq(tiny_vq), torch.rand(5, 3, 16, 16) * 2 - 1, batch_size=2)


@pytest.mark.parametrize("space", ev.SPACES)
def test_image_level_masking_with_meta_evaluators(tiny_vq, space, meta_runs):
    tokens, labels, tis = _grids()
    options = ev.Masking(spaces=(space,), progress=False, batch_size=4)
    evaluators = {"a": _evaluator(), "b": _evaluator()}
    on_meta(meta_runs, ev.image_level_experiment, tiny_vq, tokens, labels, tis, evaluators, (0, 2), options)


def test_image_level_masking_with_a_meta_decoder(tiny_vq, meta_runs):
    tokens, labels, tis = _grids()
    options = ev.Masking(spaces=("pixel",), progress=False, batch_size=4)
    evaluators = {"a": _evaluator("cpu")}
    vq = _meta_vq(tiny_vq)
    on_meta(meta_runs, ev.image_level_experiment, vq, tokens, labels, tis, evaluators, (0, 2), options)


def test_concept_level_masking_and_curves_with_meta_evaluators(tiny_vq, meta_runs):
    tokens, labels, tis = _grids()
    options = ev.Masking(spaces=ev.SPACES, progress=False, batch_size=4)
    evaluators = {"a": _evaluator()}
    sets = {"cortex": {0: [5, 7], 1: [3], 2: [9]}}
    on_meta(meta_runs, ev.concept_level_experiment, tiny_vq, tokens, labels, sets, evaluators, 1, options)
    on_meta(meta_runs, sanity.faithfulness_curves, tiny_vq, tokens, labels, {"tis": tis}, evaluators, options)


# --- codebook optimisation ---------------------------------------------------------------------------------


def _optimization_setup():
    g = torch.Generator().manual_seed(1)
    codebook, tokens = torch.randn(16, 6, generator=g), torch.randint(0, 16, GRID, generator=g)
    return codebook, tokens, opt.region_mask(GRID, (2, 5), (2, 5))


@pytest.mark.parametrize("arch", [1, 4], ids=lambda a: iemlib.ARCHITECTURES[a])
def test_optimize_tokens_on_meta(arch, meta_runs):
    codebook, tokens, region = _optimization_setup()
    options = opt.TokenSearch(steps=2, progress=False, snapshot_every=1)
    on_meta(meta_runs, opt.optimize_tokens, _iem(arch), codebook, tokens, region, 2, options)


@pytest.mark.parametrize("arch", [1, 4], ids=lambda a: iemlib.ARCHITECTURES[a])
def test_optimize_embeddings_on_meta(arch, meta_runs):
    codebook, tokens, region = _optimization_setup()
    options = opt.Search(steps=2, progress=False, snapshot_every=1)
    on_meta(meta_runs, opt.optimize_embeddings, _iem(arch), codebook, tokens, region, 2, options)


# --- generation: the transformer on meta -----------------------------------------------------------------


@pytest.fixture
def meta_transformer(tiny_config, tiny_vq):
    cfg = gen.transformer_config(tiny_config, n_classes=3, n_layer=1, n_head=2, n_embd=16)
    return gen.build_transformer(cfg, vq=tiny_vq, seed=0).to(META)


def test_sampling_on_meta(meta_transformer, meta_runs):
    on_meta(meta_runs, gen.sample_tokens, meta_transformer, [0, 1, 2], top_k=5, batch_size=2, progress=False)
    on_meta(meta_runs, gen.sample_tokens, meta_transformer, [0, 1], top_k=None, suppress=[3], progress=False)


def test_guided_sampling_on_meta(meta_transformer, meta_runs):
    on_meta(meta_runs, gen.sample_guided, meta_transformer, [0, 1], [[0, 1], [0, 1]], scale=1.0, top_k=5)


def test_transformer_training_on_meta(meta_transformer, meta_runs):
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(0, 32, (12, *GRID)), np.arange(12) % 3
    val = (tokens[:4], labels[:4])
    on_meta(
        meta_runs, gen.train_transformer, meta_transformer, tokens, labels, steps=2, batch_size=4, val=val
    )
