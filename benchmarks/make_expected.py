"""Write docs/expected_metrics.json: the default run's metrics, each with the tolerance a run on another CPU
must stay within (format: docs/expected_metrics.md).

    python benchmarks/make_expected.py RUN_DIR [RUN_DIR ...] --out docs/expected_metrics.json

The first RUN_DIR is the default run (``make verify`` leaves one in runs/verify); any further ones are runs of
the same default under other instruction sets (``make verify-isa``: runs/verify-isa). Every value is the
first run's. A numeric key's tolerance is max(its rule's floor, 3 x the largest difference between the given
runs), rounded up to two significant digits; strings, booleans and integers are compared exactly and must be
equal in every run. Timing and other machine-dependent keys are written as informational: kept for reading,
never checked. A key that no rule in RULES covers is an error (add a rule, or pass --informational KEY).

Last line: expected_keys=<checked> expected_informational=<n> expected_widened=<keys whose tolerance the runs
widened beyond the floor>
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "cortex-expected-metrics/1"
SPREAD_FACTOR = 3  # tolerance >= 3 x the largest difference seen between the given runs

# The rule table: the first rule whose pattern matches a key (re.search) decides. ``floor`` None =
# informational (not checked), 0 = exact. Floors cover float differences between CPUs (last bits of float32
# kernels, and the discrete flips they can cause: a near-tie in a ranking, a ReLU / max-pool switch, a sampled
# token at a boundary); they do not cover a different model, a different dataset or different parameters.
# (pattern, kind, floor, why)
RULES = [
    # wall times (every <notebook>_seconds, pipeline_seconds, kernel_import_seconds, dataset_load_seconds,
    # tis_seconds_per_image): facts about the machine and its load, not results
    (r"seconds", "timing", None, "wall time: depends on the machine and its load"),
    # what the machine or the environment is, should a notebook ever record it
    (r"(^|_)(threads|nproc|jobs|cpu|cpu_capability|hostname)$", "machine", None, "a fact about the machine"),
    # PSNR over the 750 real test digits: the float32 encoder/decoder differ in the last bits between
    # instruction sets (isa_kernels.py: ~2e-6 per decoded pixel); a nearest-code tie flips one position of
    # one image (16 of 2.3 M pixels), far below 0.01 dB
    (
        r"^vq_test_psnr_db$",
        "psnr_db",
        0.01,
        "PSNR over 750 test images: last-bit encoder/decoder differences",
    ),
    # share of the 256 codes used on the test digits: a nearest-code tie can add or drop a code used once
    (
        r"^vq_codebook_usage$",
        "codebook_share",
        2 / 256,
        "share of 256 codes: two codes' worth (nearest-code ties)",
    ),
    # notebook 06: the share of the classes' first 10 concept tokens that are background ids (of 100 ids): a
    # TIS near-tie can swap one id in or out of a class's first ten
    (
        r"^concept_tokens_background_share$",
        "token_share",
        0.02,
        "share of 100 concept-token slots: a TIS near-tie swaps one",
    ),
    # bytes on disk per image of the shipped dataset, copied byte for byte into the run (its manifest holds
    # only repository-relative paths): the same everywhere
    (r"^dataset_bytes_per_image$", "size", 0.01, "the shipped dataset's files, copied byte for byte"),
    # mean of the two evaluators' accuracy over the 500 test images of the shipped generated dataset: an
    # image whose two top logits nearly tie may flip; two images' worth
    (
        r"^generated_evaluator_accuracy$",
        "accuracy_500",
        2 / 500,
        "accuracy over 500 images: two images' worth",
    ),
    # the shipped evaluators' accuracy on the 750 real test digits (notebook 02): two images' worth
    (
        r"^evaluator_(cnn|resnet)_test_accuracy$",
        "accuracy_750",
        2 / 750,
        "accuracy over 750 images: two images' worth",
    ),
    # the shipped IEMs' top-1 over the 500 test grids: two images' worth of near-tied logits
    (r"^iem\d_test_top\d+$", "accuracy_500", 2 / 500, "accuracy over 500 images: two images' worth"),
    # notebook 10's attribute IEMs over their 200 test generations (100 per value): two images' worth
    (r"^bias_.*_iem_accuracy", "accuracy_200", 2 / 200, "accuracy over 200 images: two images' worth"),
    # notebook 10's generator, judged on the shipped generations: the evaluators' mean agreement with the
    # prompted digit over the 3,000 neutral ones, and the pixel rules' agreement with the prompted value over
    # each type's 2,000 prompted ones; decoded pixels differ in the last bits, so an image on a logit tie or
    # on the width threshold can flip: a few images' worth
    (
        r"^bias_generator_digit_agreement$",
        "accuracy_3000",
        0.002,
        "agreement over 3,000 images: a few images' worth",
    ),
    (
        r"^bias_.*_pixel_rule_accuracy$",
        "accuracy_2000",
        0.002,
        "agreement over 2,000 images: a few images' worth",
    ),
    # Cliff's delta of raw attribute-token counts over 1,000 neutral generations (the paper's statistic,
    # both scales, and its interval ends): a TIS near-tie can move a counted position, and with it a token
    (r"^bias_.*_delta", "cliffs_delta", 0.02, "Cliff's delta over 1,000 images: near-ties in the TIS"),
    # shares of the 1,000 neutral generations: measured from their pixels (truth), or estimated from their
    # attribute tokens with a seeded bootstrap interval (est / low / high); a TIS near-tie can move a token
    # and with it a few images' classification: 0.02 = 20 images
    (r"^bias_.*_share", "share_1000", 0.02, "share of 1,000 generated images: a few generations' worth"),
    # share of the 10 (evaluator, n >= 1) cells where TIS masking beats random masking: one cell can flip
    # only when the two drops nearly tie; one cell's worth
    (
        r"^image_level_tis_beats_random",
        "share_of_cells",
        0.1,
        "share of 10 cells: one cell's worth on a near tie",
    ),
    # mean logit drop over evaluators and 750 images: logits (|x| ~ 10) differ by ~1e-5; a TIS near-tie
    # (isa_kernels.py: TIS jumps ~5e-4 where a ReLU switch flips) may move one counted position
    (
        r"^concept_level_.*_drop$",
        "mean_logit_drop",
        0.01,
        "mean logit drop: last bits and rare TIS near-ties",
    ),
    # logit drop per masked position, and the drops read at a matched number of positions: as the drops
    (
        r"^concept_level_(drop_per_position|matched_drop)_",
        "mean_logit_drop",
        0.01,
        "mean logit drop (per position): last bits and rare TIS near-ties",
    ),
    # positions masked per image (500 test images): a concept token that changes on a TIS near-tie changes
    # the positions it covers
    (
        r"^concept_level_(positions_masked_|matched_positions)",
        "positions_per_image",
        0.02,
        "positions per image over 500 images: a token changed on a TIS near-tie",
    ),
    # notebook 15's fast mode against float32: bfloat16 kernels differ between CPUs (AMX, AVX512-BF16,
    # oneDNN's ISA setting) far more than float32 ones do, and a CPU without bfloat16 does not record the key
    # at all
    (
        r"^tis_top5_bf16",
        "bf16_agreement",
        None,
        "bfloat16 vs float32 top-5 agreement: bfloat16 kernels differ between CPUs; absent where bfloat16 is "
        "not native",
    ),
    # share of an image's top-5 TIS positions that two computations agree on (100 images x 5 positions;
    # one position = 0.002): last-bit differences flip near-tied positions (also the reduced-variance draws'
    # keys)
    (r"^tis_top5_", "agreement_500", 0.01, "top-5 agreement over 100 images: near-tied positions"),
    # mean target probability before optimisation (12 images x 2 evaluators): last bits only
    (r"^codebook_target_prob_before$", "mean_probability", 1e-3, "mean probability: last-bit differences"),
    # after 200 Adam steps on Gumbel-softmax scores the last bits are carried forward and a token may be
    # snapped differently: one of the 24 probabilities moving by 0.25 moves the mean by 0.01
    (
        r"^codebook_target_prob_after$",
        "optimised_probability",
        0.01,
        "mean probability after 200 optimisation steps: differences are carried forward",
    ),
    # notebook 09's saliency vs optimisation. The share of the distinct ids put into 12 optimised regions that
    # are the target's first 10 concept tokens (and the same for the random-id control and the other classes'
    # tokens): an optimised id snapped differently, or a concept token swapped on a TIS near-tie (ranks 8-12
    # of class 8 tie in count), moves one grid's share by up to 1/3; 0.03 = that in one of the 12 grids
    (
        r"^codebook_opt_concept_overlap(_random_ids|_other_classes)?$",
        "overlap_share",
        0.03,
        "share of ids in 12 regions: one id of one region (a snapped id, a concept-token near-tie)",
    ),
    # its chance level: a seeded Monte Carlo mean (2000 draws per region, one stream per region), which moves
    # only if a region's number of new ids changes (that region's draws then differ): ~0.002 per region
    (
        r"^codebook_opt_concept_overlap_chance$",
        "mc_share",
        0.005,
        "seeded Monte Carlo mean: a region's id count",
    ),
    # its Monte Carlo p-value moves with the overlap (one id of one region) and the chance
    (
        r"^codebook_opt_concept_overlap_p$",
        "p_value",
        0.1,
        "Monte Carlo p-value: moves with one id of one region",
    ),
    # the evaluators' target probability with the region filled by the target's concept tokens (6 images x 2
    # evaluators): a concept token swapped on a TIS near-tie changes a placed id of an image
    (
        r"^codebook_concept_fill_target_prob$",
        "mean_probability",
        0.02,
        "mean probability of 6 filled images: a concept-token near-tie moves a placed id",
    ),
    # the controls' fills come from integer counts (frequency ids, usage draws seeded): decoder and evaluator
    # last bits only
    (
        r"^codebook_(random|frequency)_fill_target_prob$",
        "mean_probability",
        1e-3,
        "mean probability of fills made from integer counts: last-bit differences",
    ),
    # notebook 14 (several objects): the shipped IEM on composites over the 750 test composites: two images'
    # worth
    (
        r"^multiobject_iem_(test_top1|predicts_distractor)$",
        "accuracy_750",
        2 / 750,
        "accuracy over 750 composites: two images' worth",
    ),
    # the target half's share of the grid's positions: a constant of the grid
    (r"^multiobject_pointing_chance$", "grid_share", 1e-9, "the half's share of the positions: a constant"),
    # share of 750 composites' top-5 TIS positions on the target's half, and its seeded bootstrap interval
    # (the same resamples of other values): last-bit differences flip near-tied positions; 0.005 = 19 of 3,750
    (
        r"^multiobject_pointing_(top5|random_iem)(_low|_high)?$",
        "pointing_share",
        0.005,
        "share of 3,750 top-5 positions: near-tied positions",
    ),
    # mean over 10 classes of |A & B| / 5 for the first 5 concept ids: one id of one class moves it by 0.02
    (
        r"^multiobject_concept_overlap_top5(_split_half)?$",
        "overlap_share",
        0.02,
        "overlap of 10 classes' 5 ids: one id of one class (a concept-token near-tie)",
    ),
    # its chance: seeded Monte Carlo draws against notebook 06's sets, which a concept-token near-tie can
    # change
    (
        r"^multiobject_concept_overlap_top5_chance$",
        "mc_share",
        0.01,
        "seeded Monte Carlo mean against sets a concept-token near-tie can change",
    ),
    # notebook 16's mitigation: shares of 1,000 shipped generations (planted value from pixels, digit kept by
    # the evaluators) and their differences; decoded pixels differ in the last bits, so only an image on a
    # threshold's edge can flip: six images' worth, as the study's shares
    (
        r"^mitigation_.*_(share|digit_agreement|change|change_vs_random|digit_change)_?",
        "share_1000",
        0.02,
        "share of 1,000 generated images (or a difference of two): a few generations' worth",
    ),
    # mean Spearman correlation of 100 images' maps: rank near-ties between positions
    (
        r"^sanity_(data_)?(abs_)?rank_corr_",
        "rank_correlation",
        0.02,
        "mean Spearman over 100 images: rank near-ties",
    ),
    # area under the evaluators' mean probability over 20 images x 9 points: a near-tie swaps two
    # positions in one image's order and moves one point of one curve
    (r"^(deletion|insertion)_auc_", "auc_20", 0.005, "AUC over 20 images: a near-tie swaps two positions"),
]
EXACT_KIND = "exact"  # strings, booleans, integers


def rule_for(key: str, value):
    """(kind, floor, why) for a key; floor None = informational. Non-float values are exact unless
    informational."""
    for pattern, kind, floor, why in RULES:
        if re.search(pattern, key):
            if floor is None or isinstance(value, float):
                return kind, floor, why
            break
    if isinstance(value, (str, bool, int)) or value is None:
        return EXACT_KIND, 0, "compared exactly (a string, boolean or integer)"
    return None


def read_run(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "metrics.json"
    if not p.is_file():
        raise SystemExit(f"error: {p} does not exist (a finished `make verify` run holds one)")
    return json.loads(p.read_text())


def isa_note(run_dir: str | Path) -> str:
    """What `make verify` / `make verify-isa` noted about the run's instruction set (isa_kernels.py
    --describe)."""
    p = Path(run_dir) / "isa.txt"
    return p.read_text().strip() if p.is_file() else "not recorded"


def round_up(x: float, digits: int = 2) -> float:
    if x <= 0:
        return 0.0
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale * (1 - 1e-12)) / scale


def previous_values(previous: dict | None, first: dict, fresh: str = "") -> dict:
    """From an earlier expected file, the checked numeric keys whose value the first run still reproduces
    within the earlier tolerance: ``{key: (earlier value, earlier tolerance)}``, leaving out the keys matching
    ``fresh`` (a regular expression for the quantities an intended change redefined, whose earlier values may
    lie close by chance). Those numbers come from other machines
    (the earlier file's runs), so they count as more observations of the same quantity; a key the run moved
    out of its tolerance (an intended change of the default) starts afresh."""
    out = {}
    for key, e in (previous or {}).get("checked", {}).items():
        if fresh and re.search(fresh, key):
            continue
        v = first.get(key)
        if e["kind"] == EXACT_KIND or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if abs(v - e["value"]) <= e["tolerance"]:
            out[key] = (e["value"], e["tolerance"])
    return out


def build(
    run_dirs: list[str],
    informational: tuple[str, ...] = (),
    provisional: bool = False,
    command: str = "",
    previous: dict | None = None,
    fresh: str = "",
    preset: str = "default",
) -> tuple[dict, list[str]]:
    """The expected file's content from the runs, and the keys whose tolerance the runs widened beyond the
    floor.

    ``previous``: an earlier expected file (made on other machines). A key it checked that the first run still
    reproduces keeps at least its earlier tolerance, and its earlier value counts toward the spread.
    ``preset``: the preset the runs ran (named in the file)."""
    runs = [read_run(d) for d in run_dirs]
    first = runs[0]
    earlier = previous_values(previous, first, fresh)
    problems, checked, info, widened = [], {}, {}, []
    for key, value in first.items():
        missing = [d for d, r in zip(run_dirs, runs, strict=True) if key not in r]
        if key in informational:
            info[key] = {"value": value, "kind": "given", "why": "marked informational on the command line"}
            continue
        rule = rule_for(key, value)
        if rule is None:
            problems.append(
                f"{key} = {value!r}: no rule in RULES (benchmarks/make_expected.py) covers it; add one "
                "or pass --informational " + key
            )
            continue
        kind, floor, why = rule
        if floor is None:
            info[key] = {"value": value, "kind": kind, "why": why}
            continue
        if missing:
            problems.append(f"{key}: missing from {', '.join(missing)}")
            continue
        values = [r[key] for r in runs]
        if kind == EXACT_KIND:
            if any(v != value for v in values):
                problems.append(
                    f"{key}: compared exactly, but the runs differ: {values} (pass --informational {key} "
                    "if it may differ between CPUs)"
                )
                continue
            checked[key] = {"value": value, "tolerance": 0, "kind": kind}
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            problems.append(f"{key}: not numeric in every run: {values}")
            continue
        old_value, old_tolerance = earlier.get(key, (None, 0.0))
        seen = values + ([old_value] if old_value is not None else [])
        spread = max(seen) - min(seen)
        tolerance = round_up(max(floor, SPREAD_FACTOR * spread, old_tolerance))
        if tolerance > round_up(floor):
            widened.append(key)
        checked[key] = {
            "value": value,
            "tolerance": tolerance,
            "kind": kind,
            "floor": round_up(floor, 3),
            "spread": round(spread, 6),
        }
        if old_value is not None:
            checked[key]["previous"] = {"value": old_value, "tolerance": old_tolerance}
    extra = sorted({k for r in runs[1:] for k in r} - set(first))
    for k in extra:
        if rule_for(k, 0.0) is None or rule_for(k, 0.0)[1] is not None:
            problems.append(f"{k}: in a later run but not in the first ({run_dirs[0]})")
    if problems:
        raise SystemExit("error: cannot write the expected metrics:\n  " + "\n  ".join(problems))
    kinds = {
        kind: {"floor": None if floor is None else round_up(floor, 3), "why": why}
        for _, kind, floor, why in RULES
        if kind in {e["kind"] for e in (*checked.values(), *info.values())}
    }
    if any(e["kind"] == EXACT_KIND for e in checked.values()):
        kinds[EXACT_KIND] = {"floor": 0, "why": "strings, booleans and integers: equal or not"}
    return {
        "format": FORMAT,
        "about": (
            f"Expected metrics of the {preset} run (`python -m cortex_run.pipeline --preset {preset}`: "
            f"shipped data and models). A run passes when every key under `checked` is within "
            "|got - value| <= tolerance (exact for kind `exact`); keys under `informational` are not "
            "checked. Check a run: benchmarks/verify_expected.py RUN_DIR. Format and how to regenerate: "
            "docs/expected_metrics.md."
        ),
        "provisional": provisional,
        "generated_by": command,
        "rule": f"tolerance = max(floor of the key's kind, {SPREAD_FACTOR} x (max - min over the runs)), "
        "rounded up to two significant digits",
        "runs": [{"run_dir": str(d), "isa": isa_note(d)} for d in run_dirs],
        "previous_runs": []
        if previous is None
        else previous.get("runs", []) + previous.get("previous_runs", []),
        "kinds": kinds,
        "checked": checked,
        "informational": info,
    }, widened


def keep_others(expected: dict, previous: dict, only: str) -> dict:
    """``expected`` with every key that does not match ``only`` (a regex) taken unchanged from ``previous``:
    for remaking the file after a change that moved only some keys (the others keep their values and
    tolerances, and the runs they were measured on stay named)."""
    out = dict(expected)
    for section in ("checked", "informational"):
        merged = {k: v for k, v in previous.get(section, {}).items() if not re.search(only, k)}
        merged.update({k: v for k, v in expected[section].items() if re.search(only, k)})
        out[section] = merged
    out["kinds"] = {**previous.get("kinds", {}), **expected["kinds"]}
    out["remade_keys"] = only
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `make benchmarks` runs every script here without arguments: nothing to measure
        print(__doc__.strip().splitlines()[2].strip())
        print("make_expected=usage (needs RUN_DIR arguments; nothing done)")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="the default run first, then runs of the same default under other instruction sets",
    )
    ap.add_argument("--out", required=True, help="where to write (docs/expected_metrics.json)")
    ap.add_argument(
        "--informational",
        action="append",
        default=[],
        metavar="KEY",
        help="also keep KEY unchecked (repeatable)",
    )
    ap.add_argument(
        "--previous",
        metavar="FILE",
        help="an earlier expected file from other machines: a key the first run still reproduces "
        "within its tolerance keeps at least that tolerance, its value counts toward the spread",
    )
    ap.add_argument(
        "--fresh",
        metavar="REGEX",
        default="",
        help="with --previous: keys matching REGEX start afresh (quantities an intended change redefined)",
    )
    ap.add_argument(
        "--only",
        metavar="REGEX",
        default="",
        help="with --previous: remake only the keys matching REGEX; every other key is copied unchanged",
    )
    ap.add_argument(
        "--preset", default="default", help="the preset the runs ran (named in the file; default)"
    )
    ap.add_argument(
        "--provisional",
        action="store_true",
        help="mark the file provisional (not from the final runs; for trying the tooling)",
    )
    args = ap.parse_args(argv)
    command = "python benchmarks/make_expected.py " + " ".join(argv)
    previous = json.loads(Path(args.previous).read_text()) if args.previous else None
    expected, widened = build(
        args.run_dirs, tuple(args.informational), args.provisional, command, previous, args.fresh, args.preset
    )
    if args.only:
        if previous is None:
            raise SystemExit("error: --only needs --previous (the file whose other keys are kept)")
        expected = keep_others(expected, previous, args.only)
    out = Path(args.out)
    sys.path.insert(0, str(ROOT))
    from cortex_run.artifacts import write_json

    write_json(out, expected)
    for key, e in expected["checked"].items():
        tol = (
            "exact"
            if e["kind"] == EXACT_KIND
            else f"± {e['tolerance']:g} ({e['kind']}, runs differ by {e['spread']:g})"
        )
        print(f"{key:<45} {e['value']!r:>12} {tol}")
    print(f"{len(expected['informational'])} informational keys: {', '.join(expected['informational'])}")
    print(f"wrote {out}" + (" (PROVISIONAL)" if args.provisional else ""))
    print(
        f"expected_keys={len(expected['checked'])} expected_informational={len(expected['informational'])} "
        f"expected_widened={len(widened)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
