"""The expected metrics of the default run: make_expected (tolerances), verify_expected (the check) and
readme_results (README figures rendered from the expected file)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_expected = _load("make_expected")
readme_results = _load("readme_results")


def _run(script, *args):
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )
    return proc.returncode, proc.stdout, proc.stderr


def _run_dir(path, metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


# --- verify_expected -------------------------------------------------------------------------------------

EXPECTED = {
    "format": "cortex-expected-metrics/1",
    "checked": {
        "iem1_test_top1": {"value": 0.97, "tolerance": 0.004, "kind": "accuracy_500"},
        "concept_level_tis_drop": {"value": 0.72, "tolerance": 0.01, "kind": "mean_logit_drop"},
        "bias_colour_delta_biased": {"value": 0.52, "tolerance": 0.02, "kind": "cliffs_delta"},
        "recommended_method": {"value": "occlusion", "tolerance": 0, "kind": "exact"},
        "codebook_tokens_changed_outside_region": {"value": 0, "tolerance": 0, "kind": "exact"},
    },
    "informational": {"pipeline_seconds": {"value": 230.0, "kind": "timing"}},
}


@pytest.fixture
def expected_file(tmp_path):
    p = tmp_path / "expected.json"
    p.write_text(json.dumps(EXPECTED))
    return p


def test_verify_reports_off_missing_and_strings(tmp_path, expected_file):
    run = _run_dir(
        tmp_path / "run",
        {
            "iem1_test_top1": 0.974,  # inside: |0.004| <= 0.004 (a rounded difference, just at the edge)
            "concept_level_tis_drop": 0.70,  # outside: 0.02 > 0.01
            # bias_colour_delta_biased missing
            "recommended_method": "smoothgrad",  # a string: compared exactly
            "codebook_tokens_changed_outside_region": 0,
            "pipeline_seconds": 999.0,  # informational: not checked
            "new_metric": 1.0,  # not in the expected file: named, not counted
        },
    )
    rc, out, err = _run("verify_expected.py", run, "--expected", expected_file)
    assert rc == 1, err
    lines = out.strip().splitlines()
    assert lines[-1] == "verify_keys=5 verify_off=3"
    off = [ln for ln in lines if ln.startswith(("OFF", "MISSING"))]
    assert len(off) == 3
    assert any(
        "concept_level_tis_drop" in ln and "expected 0.72" in ln and "got 0.7" in ln and "0.01" in ln
        for ln in off
    )
    assert any(ln.startswith("MISSING") and "bias_colour_delta_biased" in ln and "0.52" in ln for ln in off)
    assert any("recommended_method" in ln and "'occlusion'" in ln and "'smoothgrad'" in ln for ln in off)
    assert not any("iem1_test_top1" in ln or "pipeline_seconds" in ln for ln in off)
    assert any("new_metric" in ln for ln in lines)


def test_verify_passes_within_tolerance(tmp_path, expected_file):
    run = _run_dir(
        tmp_path / "run",
        {
            "iem1_test_top1": 0.966,
            "concept_level_tis_drop": 0.725,
            "bias_colour_delta_biased": 0.50,
            "recommended_method": "occlusion",
            "codebook_tokens_changed_outside_region": 0,
            "pipeline_seconds": 1.0,
        },
    )
    rc, out, _ = _run("verify_expected.py", run, "--expected", expected_file)
    assert rc == 0
    assert out.strip().splitlines()[-1] == "verify_keys=5 verify_off=0"


def test_verify_missing_run_dir_or_metrics_is_exit_2(tmp_path, expected_file):
    rc, _, err = _run("verify_expected.py", tmp_path / "nope", "--expected", expected_file)
    assert rc == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    rc, _, err = _run("verify_expected.py", tmp_path / "empty", "--expected", expected_file)
    assert rc == 2 and "metrics.json does not exist" in err
    run = _run_dir(tmp_path / "run", {})
    rc, _, err = _run("verify_expected.py", run, "--expected", tmp_path / "missing.json")
    assert rc == 2 and "missing.json" in err


# --- make_expected ---------------------------------------------------------------------------------------


def test_make_expected_tolerance_rule(tmp_path):
    a = _run_dir(
        tmp_path / "a",
        {
            "iem1_test_top1": 0.97,
            "bias_colour_delta_biased": 0.50,
            "vq_test_psnr_db": 26.814,
            "recommended_method": "occlusion",
            "codebook_tokens_changed_outside_region": 0,
            "pipeline_seconds": 230.1,
            "04_test_iem_seconds": 10.0,
            "tis_seconds_per_image": 0.005,
        },
    )
    b = _run_dir(
        tmp_path / "b",
        {
            "iem1_test_top1": 0.972,
            "bias_colour_delta_biased": 0.53,
            "vq_test_psnr_db": 26.814,
            "recommended_method": "occlusion",
            "codebook_tokens_changed_outside_region": 0,
            "pipeline_seconds": 400.0,
            "04_test_iem_seconds": 20.0,
            "tis_seconds_per_image": 0.009,
        },
    )
    out = tmp_path / "expected.json"
    rc, stdout, err = _run("make_expected.py", a, b, "--out", out)
    assert rc == 0, err
    assert stdout.strip().splitlines()[-1] == "expected_keys=5 expected_informational=3 expected_widened=2"
    e = json.loads(out.read_text())
    c = e["checked"]
    # value = the first run's; tolerance = max(floor, 3 x the largest difference between the runs)
    assert c["iem1_test_top1"]["value"] == 0.97
    assert c["iem1_test_top1"]["tolerance"] == pytest.approx(0.006)  # 3 x 0.002 > floor 0.004
    assert c["bias_colour_delta_biased"]["tolerance"] == pytest.approx(0.09)  # 3 x 0.03 > floor 0.02
    assert c["vq_test_psnr_db"]["tolerance"] == pytest.approx(0.01)  # no difference: the floor
    assert c["recommended_method"] == {"value": "occlusion", "tolerance": 0, "kind": "exact"}
    assert c["codebook_tokens_changed_outside_region"]["kind"] == "exact"
    assert set(e["informational"]) == {"pipeline_seconds", "04_test_iem_seconds", "tis_seconds_per_image"}
    assert e["runs"][0]["run_dir"] == str(a) and e["provisional"] is False
    # the file it wrote checks both runs clean
    for run in (a, b):
        rc, stdout, _ = _run("verify_expected.py", run, "--expected", out)
        assert rc == 0 and stdout.strip().endswith("verify_keys=5 verify_off=0")


def test_make_expected_keeps_a_previous_files_tolerances(tmp_path):
    """--previous: a key the new run still reproduces keeps the earlier (other machines') tolerance and its
    earlier value counts toward the spread; a key the run moved out of tolerance (an intended change) starts
    afresh."""
    a = _run_dir(
        tmp_path / "a", {"iem1_test_top1": 0.97, "bias_colour_share_est": 0.84, "vq_test_psnr_db": 26.80}
    )
    old = {
        "checked": {
            "iem1_test_top1": {"value": 0.968, "tolerance": 0.01, "kind": "accuracy_500"},
            "bias_colour_share_est": {"value": 0.92, "tolerance": 0.02, "kind": "share_300"},
            "vq_test_psnr_db": {"value": 26.805, "tolerance": 0.01, "kind": "psnr_db"},
        },
        "runs": [{"run_dir": "intel", "isa": "AVX512"}],
    }
    expected, widened = make_expected.build([str(a)], previous=old)
    c = expected["checked"]
    assert c["iem1_test_top1"]["tolerance"] == pytest.approx(0.01)  # the earlier tolerance (> 3 x 0.002)
    assert c["iem1_test_top1"]["previous"] == {"value": 0.968, "tolerance": 0.01}
    assert c["vq_test_psnr_db"]["tolerance"] == pytest.approx(0.015)  # 3 x the 0.005 to the earlier value
    assert (
        c["bias_colour_share_est"]["tolerance"] == pytest.approx(0.02)
        and "previous" not in c["bias_colour_share_est"]
    )
    assert set(widened) == {"iem1_test_top1", "vq_test_psnr_db"}
    assert expected["previous_runs"] == [{"run_dir": "intel", "isa": "AVX512"}]
    # --fresh: a redefined quantity whose earlier value lies close by chance starts afresh all the same
    expected, _ = make_expected.build([str(a)], previous=old, fresh=r"^iem1_")
    assert expected["checked"]["iem1_test_top1"]["tolerance"] == pytest.approx(0.004)


def test_make_expected_only_remakes_the_keys_it_names(tmp_path):
    """--only: the keys matching the pattern come from the new run, every other key stays as the earlier file
    had it (value and tolerance), keys only the earlier file has stay, and a new key matching is added."""
    a = _run_dir(
        tmp_path / "a",
        {"iem1_test_top1": 0.95, "bias_colour_share_est": 0.70, "bias_colour_verdict": "found"},
    )
    old = {
        "checked": {
            "iem1_test_top1": {"value": 0.968, "tolerance": 0.01, "kind": "accuracy_500"},
            "bias_colour_share_est": {"value": 0.92, "tolerance": 0.02, "kind": "share_300"},
            "vq_test_psnr_db": {"value": 26.805, "tolerance": 0.01, "kind": "psnr_db"},
        },
        "informational": {"01_vq_model_seconds": {"value": 3.0, "kind": "timing"}},
        "kinds": {"psnr_db": {"floor": 0.01, "why": "x"}},
        "runs": [{"run_dir": "intel", "isa": "AVX512"}],
    }
    expected, _ = make_expected.build([str(a)], previous=old, fresh=r"^bias_")
    kept = make_expected.keep_others(expected, old, r"^bias_colour_")
    c = kept["checked"]
    assert c["iem1_test_top1"] == old["checked"]["iem1_test_top1"]  # moved by the run, but not named
    assert c["vq_test_psnr_db"] == old["checked"]["vq_test_psnr_db"]  # not in the run: kept
    assert c["bias_colour_share_est"]["value"] == 0.70 and c["bias_colour_verdict"]["value"] == "found"
    assert kept["informational"] == old["informational"] and kept["remade_keys"] == r"^bias_colour_"
    assert "psnr_db" in kept["kinds"] and "exact" in kept["kinds"]
    rc, _, err = _run("make_expected.py", a, "--out", tmp_path / "e.json", "--only", "^bias_")
    assert rc != 0 and "--only needs --previous" in err


def test_make_expected_refuses_unknown_keys_and_unequal_exact_keys(tmp_path):
    a = _run_dir(tmp_path / "a", {"mystery_score": 0.5, "recommended_method": "occlusion"})
    b = _run_dir(tmp_path / "b", {"mystery_score": 0.5, "recommended_method": "smoothgrad"})
    with pytest.raises(SystemExit, match=r"mystery_score = 0.5: no rule") as info:
        make_expected.build([str(a), str(b)])
    assert "recommended_method: compared exactly, but the runs differ" in str(info.value)
    expected, _ = make_expected.build([str(a)], informational=("mystery_score",))
    assert "mystery_score" in expected["informational"]


def test_tis_fast_mode_and_reduced_variance_keys():
    """The fast mode's agreement is kept for reading (bfloat16 kernels differ between CPUs, and a CPU without
    bfloat16 lacks the key); the reduced-variance draws' float32 agreements are checked like the other
    seeds'."""
    assert make_expected.rule_for("tis_top5_bf16_vs_float32", 0.976)[1] is None
    for key in ("tis_top5_seed_agreement_antithetic_20", "tis_top5_seed_agreement_sobol_20"):
        assert make_expected.rule_for(key, 0.73)[:2] == ("agreement_500", 0.01)


def test_every_rule_has_a_reason():
    for pattern, kind, floor, why in make_expected.RULES:
        assert why and kind and (floor is None or floor > 0), pattern


# --- readme_results --------------------------------------------------------------------------------------


def _full_expected(provisional=False, **overrides):
    """An expected file with every key the README templates need."""
    v = {
        "vq_test_psnr_db": 26.814,
        "vq_codebook_usage": 0.9648,
        "generated_evaluator_accuracy": 0.952,
        "image_level_tis_beats_random": 1.0,
        "image_level_tis_beats_random_token_space": 1.0,
        "concept_level_tis_drop": 0.7154,
        "concept_level_frequency_drop": 0.0147,
        "concept_level_contrastive_drop": 0.2681,
        "codebook_target_prob_before": 0.0308,
        "codebook_target_prob_after": 0.8537,
        "recommended_method": "none",
        "tis_top5_seed_agreement_20": 0.72,
        "tis_top5_seed_agreement_100": 0.83,
        "tis_top5_sigma_batch_vs_image": 0.79,
        "concept_level_frequency_no_background_drop": 0.41,
        "sanity_abs_rank_corr_random_control": 0.0,
        "deletion_auc_random_control_pixel": 0.47,
        "deletion_auc_random_control_token": 0.43,
        "deletion_auc_random_pixel": 0.53,
        "deletion_auc_random_token": 0.48,
    }
    for k, n in (
        ("concept", 1.44),
        ("frequency", 2.85),
        ("frequency_no_background", 1.71),
        ("contrastive", 0.37),
    ):
        v.update({f"concept_level_positions_masked_{k}": n, f"concept_level_drop_per_position_{k}": 0.3})
    v.update({f"iem{a}_test_top1": x for a, x in zip((1, 2, 3, 4), (0.97, 0.98, 0.988, 0.94), strict=True)})
    # colour: found (interval above 1/2); thickness: inconclusive; controls: no bias / inconclusive
    for b, (lo, hi), (clo, chi) in (
        ("colour", (0.7, 1.0), (0.45, 0.55)),
        ("thickness", (0.4, 0.9), (0.3, 0.7)),
    ):
        v.update(
            {
                f"bias_{b}_delta_biased": 0.5,
                f"bias_{b}_delta_control": 0.05,
                f"bias_{b}_truth_share": 0.8,
                f"bias_{b}_truth_share_control": 0.5,
                f"bias_{b}_share_truth": 0.8,
                f"bias_{b}_share_truth_control": 0.5,
                f"bias_{b}_share_est": (lo + hi) / 2,
                f"bias_{b}_share_low": lo,
                f"bias_{b}_share_high": hi,
                f"bias_{b}_share_est_control": 0.5,
                f"bias_{b}_share_low_control": clo,
                f"bias_{b}_share_high_control": chi,
                f"bias_{b}_pixel_rule_accuracy": 0.97,
            }
        )
    v["bias_generator_digit_agreement"] = 0.92
    for m in readme_results.METHODS:
        v.update({f"sanity_rank_corr_{m}": 0.5, f"sanity_abs_rank_corr_{m}": 0.5})
        v.update({f"deletion_auc_{m}_pixel": 0.2, f"deletion_auc_{m}_token": 0.2})
    v.update(overrides)
    return {"provisional": provisional, "checked": {k: {"value": x, "tolerance": 0} for k, x in v.items()}}


def test_readme_check_and_write(tmp_path):
    readme = tmp_path / "README.md"
    text = (
        "# title\n\nbefore\n\n<!-- expected:begin results (generated) -->\nstale 99 %\n"
        "<!-- expected:end results -->\n\nmiddle\n\n<!-- expected:begin bias -->\n"
        "<!-- expected:end bias -->\nafter\n"
    )
    readme.write_text(text)
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(_full_expected()))
    rc, out, _ = _run("readme_results.py", "--check", "--expected", expected, "--readme", readme)
    assert rc == 1 and "-stale 99 %" in out and out.strip().endswith("readme_blocks=2 readme_outdated=2")
    rc, out, _ = _run("readme_results.py", "--write", "--expected", expected, "--readme", readme)
    assert rc == 0
    new = readme.read_text()
    assert new.startswith("# title\n\nbefore\n\n") and "\nmiddle\n" in new and new.endswith("after\n")
    assert "stale" not in new and "97.0 % (VGG)" in new
    assert (
        "colour only:" in new
        and "| thickness | 5 | 0.65 [0.40, 0.90] | – | 0.80 | yes | inconclusive |" in new
    )
    assert (
        "| colour | 7 (control) | 0.50 [0.45, 0.55] | – | 0.50 | yes | no bias beyond ±0.1 |" in new
    )  # verdicts from intervals
    assert "Provisional" not in new
    rc, out, _ = _run("readme_results.py", "--check", "--expected", expected, "--readme", readme)
    assert rc == 0 and out.strip().endswith("readme_blocks=2 readme_outdated=0")


def test_readme_says_when_the_error_rate_check_withheld_the_interval():
    """A withheld interval ([0, 1] after the check) is not shown as one that holds the truth: the row gives
    the check's p and the interval before the check, and whether that one held the truth."""
    e = _full_expected(
        bias_thickness_share_low=0.0,
        bias_thickness_share_high=1.0,
        bias_thickness_share_check_p=0.004,
        bias_thickness_share_unchecked_low=0.85,
        bias_thickness_share_unchecked_high=0.95,
        bias_colour_share_check_p=0.2,
        bias_colour_share_unchecked_low=0.7,
        bias_colour_share_unchecked_high=1.0,
    )
    text = (
        "<!-- expected:begin bias -->\n<!-- expected:end bias -->\n<!-- expected:begin results -->\n"
        "<!-- expected:end results -->\n"
    )
    out, _ = readme_results.render_readme(text, e)
    assert (
        "| thickness | 5 | 0.65, withheld (check p = 0.004) | [0.85, 0.95] | 0.80 | — (before the check: "
        "**no**) |" in out
    )
    assert (
        "| colour | 3 | 0.85 [0.70, 1.00] | – | 0.80 | yes | found |" in out
    )  # p above 0.05: the interval stands
    assert "no interval: the rule's error rates differ" in out and "pixel truth 0.80 **outside**" in out


def test_readme_vqvae_block_needs_its_expected_file():
    block = "<!-- expected:begin vqvae -->\n<!-- expected:end vqvae -->\n"
    with pytest.raises(KeyError, match="needs the vqvae preset's expected metrics"):
        readme_results.render_readme(block, _full_expected())
    vqvae = _full_expected()
    vqvae["checked"]["vq_family"] = {"value": "vqvae_fsq", "tolerance": 0, "kind": "exact"}
    out, names = readme_results.render_readme(block, _full_expected(), expected_vqvae=vqvae)
    assert names == ["vqvae"] and "`vqvae_fsq`" in out and "| test PSNR, real digits (bar 24 dB) |" in out


def test_readme_codebook_sizes_block_renders_the_study_file():
    block = "<!-- expected:begin codebook_sizes -->\n<!-- expected:end codebook_sizes -->\n"
    with pytest.raises(KeyError, match="codebook_sizes.json"):
        readme_results.render_readme(block, _full_expected())
    row = {
        "psnr_db": 25.04,
        "codebook_usage": 0.5,
        "iem_test_top1": 0.9,
        "tis_top_share": 0.2,
        "tis_top_share_even": 0.078,
        "class_distinct_ids_tis": 40.0,
        "class_distinct_ids_random": 50.0,
        "image_mask_prob_drop_tis": 0.3,
        "image_mask_prob_drop_random": 0.1,
        "image_mask_tis_beats_random": 1.0,
        "concept_mask_logit_drop_concept": 0.7,
        "concept_mask_logit_drop_frequency": None,
    }
    study = {"top": 5, "machine": "a test CPU", "rows": {"1024": row, "64": {**row, "psnr_db": 22.0}}}
    out, names = readme_results.render_readme(block, _full_expected(), codebook_sizes=study)
    lines = out.splitlines()
    assert names == ["codebook_sizes"] and "Measured on a test CPU." in out
    assert lines[3].startswith("| 64 | 22.0 dB |") and lines[4].startswith(
        "| 1024 | 25.0 dB | 50.0 % | 90.0 % | 20.0 % (7.8 %)"
    )
    assert "| 40.0 (50.0) | 0.30 (0.10) | 100 % | 0.70 (nan) |" in lines[4]
    # the sentence under the table is computed from the rows: a comparison that fails, and one not measured
    study["rows"]["64"] |= {"tis_top_share": 0.1, "concept_mask_logit_drop_frequency": 0.5}
    out, _ = readme_results.render_readme(block, _full_expected(), codebook_sizes=study)
    assert "in every cell at 64, 1024 codes;" in out
    assert "even share of the |TIS| at 1024 (not at 64);" in out
    assert "most frequent tokens at 64 (not measured at 1024)." in out


def test_readme_missing_key_is_named():
    expected = _full_expected()
    del expected["checked"]["vq_test_psnr_db"]
    with pytest.raises(KeyError, match="vq_test_psnr_db"):
        readme_results.render_readme(
            "<!-- expected:begin models -->\n<!-- expected:end models -->\n", expected
        )


def test_readme_blocks_match_expected_metrics():
    """README.md's generated blocks are what benchmarks/readme_results.py renders from
    docs/expected_metrics.json (and the vqvae and codebook-size blocks from their files)."""
    expected = ROOT / "docs" / "expected_metrics.json"
    if not expected.exists():
        pytest.skip("docs/expected_metrics.json does not exist yet (benchmarks/make_expected.py writes it)")
    text = (ROOT / "README.md").read_text()
    vqvae = ROOT / "docs" / "expected_metrics_vqvae.json"
    rendered, names = readme_results.render_readme(
        text,
        json.loads(expected.read_text()),
        expected_vqvae=json.loads(vqvae.read_text()),
        codebook_sizes=json.loads(readme_results.CODEBOOK_SIZES.read_text()),
    )
    assert {"models", "results", "bias", "vqvae", "codebook_sizes"} <= set(names)
    assert rendered == text, "README.md is out of date: run python benchmarks/readme_results.py --write"
