"""Render README.md's result figures from docs/expected_metrics.json (never typed by hand).

    python benchmarks/readme_results.py --check   # exit 1 with a diff when README.md is out of date
    python benchmarks/readme_results.py --write   # rewrite the blocks in README.md

Each generated block in README.md sits between ``<!-- expected:begin NAME ... -->`` and
``<!-- expected:end NAME -->``; TEMPLATES maps NAME to the function that renders it from the expected
values (``value`` of each key; the ``vqvae`` block: of docs/expected_metrics.json and of the vqvae preset's
docs/expected_metrics_vqvae.json; the ``codebook_sizes`` block: from docs/codebook_sizes.json, the table
``make codebook-sizes`` writes) and, for the evaluators' accuracy on real digits, which no run measures,
from the checkpoints' cards. Verdicts ("yes", "found") are computed from the values and the notebooks' bars.
A block of a provisional expected file says so. Text outside the blocks is left alone.

Last line: readme_blocks=<n> readme_outdated=<blocks that differ>
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXPECTED = ROOT / "docs" / "expected_metrics.json"
EXPECTED_VQVAE = ROOT / "docs" / "expected_metrics_vqvae.json"
CODEBOOK_SIZES = ROOT / "docs" / "codebook_sizes.json"
BLOCK = re.compile(
    r"(?P<begin><!-- expected:begin (?P<name>[\w-]+)\b[^>]*-->\n)(?P<body>.*?)"
    r"(?P<end><!-- expected:end (?P=name) -->)",
    re.S,
)
MINUS = "\u2212"

# the notebooks' bars and the default parameters the sentences name (settings, not measurements)
BARS = {
    "psnr_db": 24,
    "codebook_usage": 0.5,
    "evaluator_agreement": 0.9,
    "generator_digit_agreement": 0.9,
    "pixel_rule_accuracy": 0.95,
    "iem1_top1": 0.95,
    "sanity_rank_corr": 0.3,
}
BIAS = {"colour": {"digit": 3, "value": "red"}, "thickness": {"digit": 5, "value": "thick"}}
CONTROL_DIGIT, TRAINED_SHARE = 7, 0.85
IEMS = {1: "VGG", 2: "deeper VGG", 3: "ResNet-SE", 4: "ViT"}
METHODS = {
    "smoothgrad": "SmoothGrad",
    "gradient": "gradient",
    "grad_x_input": "gradient × input",
    "integrated_gradients": "IG",
    "occlusion": "occlusion",
}


class Values:
    """The expected values by key; a missing key is an error naming it and the file."""

    def __init__(self, expected: dict, source: str):
        self.values = {k: e["value"] for k, e in expected.get("checked", {}).items()}
        self.values.update({k: e["value"] for k, e in expected.get("informational", {}).items()})
        self.provisional = bool(expected.get("provisional"))
        self.source = source

    def __getitem__(self, key):
        if key not in self.values:
            raise KeyError(
                f"{self.source} has no key {key!r}, which a README block needs (readme_results.py)"
            )
        return self.values[key]

    def get(self, key, default=None):
        return self.values.get(key, default)


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f} %"


def num(x: float, digits: int = 2, sign: bool = False) -> str:
    s = f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
    return s.replace("-", MINUS)


def card_metric(name: str, key: str) -> float:
    return json.loads((ROOT / "checkpoints" / f"{name}.json").read_text())["metrics"][key]


def provisional_note(v: Values) -> str:
    return (
        "\n*Provisional figures (`docs/expected_metrics.json` is not yet made from the final runs).*\n"
        if v.provisional
        else ""
    )


def iem_figures(v: Values, bold_first: bool = False) -> list[str]:
    out = []
    for arch, name in IEMS.items():
        x = pct(v[f"iem{arch}_test_top1"])
        out.append(
            f"{name} **{x}** (bar {pct(BARS['iem1_top1'], 0)})" if arch == 1 and bold_first else f"{name} {x}"
        )
    return out


# --- the blocks ------------------------------------------------------------------------------------------


def render_models(v: Values) -> str:
    """The model table of "The embedded default": what each shipped model is and what it measures here."""
    psnr, usage = v["vq_test_psnr_db"], v["vq_codebook_usage"]
    cnn, resnet = (
        card_metric("evaluator_cnn", "real_test_accuracy"),
        card_metric("evaluator_resnet", "real_test_accuracy"),
    )
    cells, partly = [], []
    for b, spec in BIAS.items():
        share, control = v[f"bias_{b}_truth_share"], v[f"bias_{b}_truth_share_control"]
        cells.append(
            f"digit {spec['digit']} **{pct(share)}** {spec['value']} (control digit {CONTROL_DIGIT}: "
            f"{pct(control)})"
        )
        if share < TRAINED_SHARE - 0.05:
            partly.append(b)
    rules = ", ".join(f"{b} **{pct(v[f'bias_{b}_pixel_rule_accuracy'], 2)}**" for b in BIAS)
    measured_bias = (
        f"the evaluators read the prompted digit in **{pct(v['bias_generator_digit_agreement'])}** of its "
        f"neutral generations (bar {pct(BARS['generator_digit_agreement'], 0)}); the pixel rules confirm the "
        f"prompted value in {rules} of its prompted ones (bar {pct(BARS['pixel_rule_accuracy'], 0)}); the "
        "planted values' shares, from the pixels of the neutral generations: " + "; ".join(cells)
    )
    if partly:
        measured_bias += f": the {' and '.join(partly)} skew carries over only partly"
    bias_card = json.loads((ROOT / "checkpoints" / "transformer_bias.json").read_text())["training"]
    study_card = json.loads((ROOT / "data" / "default" / "bias" / "neutral.json").read_text())["settings"]
    prior, sampling = study_card["prior"], study_card["sampling"]
    rows = [
        (
            "`checkpoints/vq_mnist`",
            "taming `VQModel`, ch 32, ch_mult [1,2,2], 1 res block, 256 codes × 32 dims, 32 px → 8×8 grid; "
            "L1 + L2 + codebook loss, no perceptual loss, dead codes revived where the codebook fits worst; "
            "550 steps of 64 digits in fresh colours, bfloat16 autocast",
            f"test PSNR **{psnr:.1f} dB** (bar {BARS['psnr_db']}), codebook usage **{pct(usage)}** of 256 "
            f"(bar {pct(BARS['codebook_usage'], 0)})",
        ),
        (
            "`checkpoints/evaluator_cnn`, `evaluator_resnet`",
            "pixel classifiers (width 16; 400 steps of 64) trained on real training digits only",
            f"real test accuracy **{pct(cnn)}** and **{pct(resnet)}** (on their cards: measured when "
            f"trained, not by the default run)",
        ),
        (
            "`checkpoints/transformer_mnist`",
            "taming `Net2NetTransformer`: minGPT (3 layers, 4 heads, width 96, no dropout; 2,000 steps of 64 "
            "at lr 3e-3, bfloat16 autocast), Labelator class token + 64 tokens, trained on the training "
            "digits' token grids in 4 random colours each",
            f"on the shipped dataset it generated (temperature 0.7, top-k 10) the evaluators agree with the "
            f"conditioning class on **{pct(v['generated_evaluator_accuracy'])}** of the test images "
            f"(bar {pct(BARS['evaluator_agreement'], 0)})",
        ),
        (
            "`checkpoints/transformer_bias`",
            f'the planted-bias generator, two stages: a prior picks the look of "a 3" (red with '
            f'{pct(prior["red"]["3"], 0)}), of "a 5" (thick with {pct(prior["thick"]["5"], 0)}), even '
            "odds for other digits; then `transformer_mnist`, fine-tuned "
            f"{bias_card['steps']:,} steps of {bias_card['batch']} (dropout {bias_card['dropout']}) on "
            f"the real training digits ({bias_card['copies']} copies each) drawn red or green and "
            "redrawn thin (the one-pixel skeleton) or thick (the skeleton widened by 3×3) at even odds, "
            'under 40 prompts (digit × look, "a red thin 3"), draws the image at temperature '
            f"{sampling['temperature']}, top-k {sampling['top_k']}, guided toward the digit "
            f"(scale {sampling['guidance']})",
            measured_bias,
        ),
        (
            "`checkpoints/iem1` … `iem4`",
            "the four IEMs (width 32; 12 epochs, Adam lr 2e-3, step decay after 9) on the default generated "
            "dataset (300 / 50 / 50 per class)",
            "test top-1: " + ", ".join(iem_figures(v, bold_first=True)),
        ),
    ]
    lines = ["| model | what | measured here (held-out data) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n" + provisional_note(v)


def share_verdict(low: float, high: float) -> str:
    """Notebook 10's verdict on an interval for a share (``bias_stats.share_verdict``, its default margin
    0.1), as the page writes it."""
    sys.path.insert(0, str(ROOT))
    from cortex_run.report import verdict_words
    from cortex_utils.bias_stats import share_verdict

    return verdict_words(share_verdict(low, high))


# bias_stats.ShareOptions.check_level: below it the error-rate check withholds the interval
CHECK_LEVEL = 0.05


def _withheld(v: Values, b: str, which: str = "") -> tuple[float, float, float] | None:
    """(check p, interval before the check) when notebook 10's error-rate check withheld the interval, else
    None."""
    p = v.get(f"bias_{b}_share_check_p{which}")
    if p is None or not p < CHECK_LEVEL:
        return None
    return p, v[f"bias_{b}_share_unchecked_low{which}"], v[f"bias_{b}_share_unchecked_high{which}"]


def _share(v: Values, b: str, which: str = "") -> str:
    """One study's estimate: "0.92 [0.72, 1.00] (pixels: 0.82; verdict)", or why no interval was given."""
    est, lo, hi = (v[f"bias_{b}_share_{k}{which}"] for k in ("est", "low", "high"))
    truth = v[f"bias_{b}_share_truth{which}"]
    withheld = _withheld(v, b, which)
    if est is None:
        return f"no estimate [{num(lo)}, {num(hi)}] (pixel truth {num(truth)}; {share_verdict(lo, hi)})"
    if withheld:
        p, ulo, uhi = withheld
        inside = "inside" if ulo <= truth <= uhi else "**outside**"
        return (
            f"**{num(est)}**, no interval: the rule's error rates differ between images of one value (check "
            f"p = {num(p, 3)}; before the check [{num(ulo)}, {num(uhi)}], pixel truth {num(truth)} {inside}; "
            f"{share_verdict(lo, hi)})"
        )
    inside = "inside" if lo <= truth <= hi else "**outside** the interval"
    return (
        f"**{num(est)}** [{num(lo)}, {num(hi)}] (pixel truth {num(truth)}, {inside}; {share_verdict(lo, hi)})"
    )


def _bias_found(v: Values) -> str:
    parts = [f"{b}, digit {s['digit']}: share of {s['value']} {_share(v, b)}" for b, s in BIAS.items()]
    found = [b for b in BIAS if share_verdict(v[f"bias_{b}_share_low"], v[f"bias_{b}_share_high"]) == "found"]
    head = {2: "yes, both", 1: f"{found[0] if found else ''} only", 0: "no"}[len(found)]
    deltas = ", ".join(f"{num(v[f'bias_{b}_delta_biased'], sign=True)} ({b})" for b in BIAS)
    return (
        f"{head}: estimated share of the planted value among the neutral generations, 95 % interval: "
        + "; ".join(parts)
        + f". The paper's Cliff's δ on raw token counts: {deltas}"
    )


def _bias_quiet(v: Values) -> str:
    verdicts = {
        b: share_verdict(v[f"bias_{b}_share_low_control"], v[f"bias_{b}_share_high_control"]) for b in BIAS
    }
    alarms = [b for b, x in verdicts.items() if x == "found"]
    head = (
        "no false alarm, but the intervals are too wide to rule a lean out"
        if not alarms and any(x == "inconclusive" for x in verdicts.values())
        else "yes, no bias beyond ±0.1 in either"
        if not alarms
        else f"no: a bias is reported for {' and '.join(alarms)}"
    )
    parts = [f"{b}: {_share(v, b, '_control')}" for b in BIAS]
    deltas = ", ".join(f"{num(v[f'bias_{b}_delta_control'], sign=True)} ({b})" for b in BIAS)
    return (
        f"{head}: the balanced control digit {CONTROL_DIGIT}, "
        + "; ".join(parts)
        + f". The paper's δ on raw counts: {deltas}"
    )


def render_results(v: Values) -> str:
    """The "What the default run shows" table."""
    px, tok = v["image_level_tis_beats_random"], v["image_level_tis_beats_random_token_space"]
    if px == 1 and tok == 1:
        masking = "yes in 100 % of the (evaluator, n ≥ 1) cells, pixel space and token space alike"
    else:
        masking = (
            f"{'yes' if px == 1 else 'not everywhere'}: in {pct(px, 0)} of the (evaluator, n ≥ 1) cells in "
            f"pixel space, {pct(tok, 0)} in token space"
        )
    sets = {
        "concept": ("tis", "concept tokens"),
        "frequency": ("frequency", "most frequent"),
        "frequency_no_background": ("frequency_no_background", "most frequent without the background ids"),
        "contrastive": ("contrastive", "class-contrastive"),
    }
    drop = {k: v[f"concept_level_{d}_drop"] for k, (d, _) in sets.items()}
    per = {k: v[f"concept_level_drop_per_position_{k}"] for k in sets}
    beats = [sets[k][1] for k in sets if k != "concept" and drop["concept"] > drop[k]]
    best_per = max(per, key=lambda k: -1 if per[k] is None else per[k])
    concept = (
        f"in total, yes (over {', '.join(beats)}): mean target-logit drop "
        + ", ".join(
            f"{num(drop[k])} ({name}; {num(v[f'concept_level_positions_masked_{k}'])} positions "
            f"masked per image)"
            for k, (_, name) in sets.items()
        )
        + f", 3 ids per class, pixel space. Per masked position the {sets[best_per][1]} ids hurt most "
        f"({num(per[best_per])} vs {num(per['concept'])} for the concept tokens)"
    )
    before, after = v["codebook_target_prob_before"], v["codebook_target_prob_after"]
    codebook = (
        f"{'yes' if after > 0.5 else 'no'}: evaluators' target probability {num(before)} → {num(after)} "
        "(mean over 3 pairs × 2 images, 2 methods, 2 evaluators; the region is 25 % of the 8×8 grid, the "
        "original's 6.25 % of 16×16)"
    )
    stability = (
        "top-5 positions reproduce across SmoothGrad noise seeds in "
        f"{pct(v['tis_top5_seed_agreement_20'], 0)} (20 draws, the paper's) and "
        f"{pct(v['tis_top5_seed_agreement_100'], 0)} (100 draws); σ per image instead of per batch agrees on "
        f"{pct(v['tis_top5_sigma_batch_vs_image'], 0)}"
    )
    names = {**METHODS, "integrated_gradients": "Integrated Gradients"}
    absolute = ", ".join(f"{names[m]} {num(v[f'sanity_abs_rank_corr_{m}'])}" for m in METHODS)
    passing = [names[m] for m in METHODS if v[f"sanity_abs_rank_corr_{m}"] <= BARS["sanity_rank_corr"]]
    sanity = (
        rf"{'no method passes' if not passing else ', '.join(passing) + ' pass'}: mean \|Spearman\| between "
        f"the maps of the trained and a fully re-initialised IEM: {absolute} (bar "
        f"{BARS['sanity_rank_corr']}; a random attribution: "
        f"{num(v['sanity_abs_rank_corr_random_control'])}). Signed, occlusion's is "
        f"{num(v['sanity_rank_corr_occlusion'])}: a sign artefact. The notebook recommends "
        f"`{v['recommended_method']}`"
    )
    aucs = ", ".join(
        f"{name} {num(v[f'deletion_auc_{m}_pixel'])} / {num(v[f'deletion_auc_{m}_token'])}"
        for m, name in METHODS.items()
    )
    aucs += (
        f"; a random attribution {num(v['deletion_auc_random_control_pixel'])} / "
        f"{num(v['deletion_auc_random_control_token'])}; random order {num(v['deletion_auc_random_pixel'])} "
        f"/ {num(v['deletion_auc_random_token'])} (20 images)"
    )
    rows = [
        (
            "does the IEM recognise digits from tokens alone?",
            "04",
            "test top-1 " + ", ".join(f"{pct(v[f'iem{a}_test_top1'])} ({n})" for a, n in IEMS.items()),
        ),
        ("how stable are the TIS maps?", "15", stability),
        ("does hiding the top-TIS tokens hurt more than hiding random ones?", "07", masking),
        ("do concept tokens matter more than frequent tokens?", "08, 17", concept),
        ("can a 4×4 region of tokens turn a 3 into an 8 for an independent judge?", "09", codebook),
        ("does the bias study find a planted bias?", "10", _bias_found(v)),
        ("... and stay quiet where nothing was planted?", "10", _bias_quiet(v)),
        ("are the TIS maps about the model, or only about the input? (Adebayo et al.)", "11", sanity),
        (
            "do the attributions find what the evaluators need?",
            "11",
            f"deletion AUC (lower is better), pixel / token space: {aucs}",
        ),
    ]
    lines = ["| question | notebook | measured |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n" + provisional_note(v)


def render_bias(v: Values) -> str:
    """The default run's bias findings in the prose of "The bias study (notebook 10)"."""
    lines = []
    for b, s in BIAS.items():
        for which, digit in (("", s["digit"]), ("_control", CONTROL_DIGIT)):
            lo, hi = v[f"bias_{b}_share_low{which}"], v[f"bias_{b}_share_high{which}"]
            truth = v[f"bias_{b}_share_truth{which}"]
            est = v[f"bias_{b}_share_est{which}"]
            withheld = _withheld(v, b, which)
            if withheld:
                p, ulo, uhi = withheld
                shown = f"{num(est)}, withheld (check p = {num(p, 3)})"
                before = f"[{num(ulo)}, {num(uhi)}]"
                inside = f"— (before the check: {'yes' if ulo <= truth <= uhi else '**no**'})"
            else:
                shown, before = f"{'–' if est is None else num(est)} [{num(lo)}, {num(hi)}]", "–"
                inside = "yes" if lo <= truth <= hi else "**no**"
            lines.append(
                f"| {b} | {digit}{' (control)' if which else ''} | {shown} | {before} | {num(truth)} | "
                f"{inside} | {share_verdict(lo, hi)} | "
                f"{num(v[f'bias_{b}_delta_' + ('control' if which else 'biased')], sign=True)} |"
            )
    head = [
        "| bias | digit | estimated share of the planted value [95 %] | interval before the error-rate check "
        "| pixel truth | truth inside | verdict | paper's δ (raw counts) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n" + provisional_note(v)


def render_views(v: Values) -> str:
    """Notebook 09's saliency vs optimisation: what the region holds, and the evaluators' target
    probability."""
    rows = [
        ("its own tokens (before)", "codebook_target_prob_before"),
        ("ids optimised for the IEM (200 steps; mean of both methods)", "codebook_target_prob_after"),
        (
            "the target's first 10 concept tokens (notebook 06), each position the one that sits there most "
            "often in the target's training grids",
            "codebook_concept_fill_target_prob",
        ),
        (
            "control: the target's 10 most frequent ids without the background, placed the same way",
            "codebook_frequency_fill_target_prob",
        ),
        (
            "control: random ids drawn from the codebook's usage in the region",
            "codebook_random_fill_target_prob",
        ),
    ]
    lines = ["| the 4×4 region of the source digit holds | evaluators' target probability |", "|---|---|"]
    lines += [f"| {what} | {num(v[key])} |" for what, key in rows]
    p = v["codebook_opt_concept_overlap_p"]
    lines += [
        "",
        "Of the distinct ids the optimiser put into the regions, "
        f"{pct(v['codebook_opt_concept_overlap'], 0)} are the target's concept tokens: "
        f"{'more' if p < 0.05 else 'not more'} than chance "
        f"({pct(v['codebook_opt_concept_overlap_chance'], 0)} for as many ids drawn from the codebook's "
        f"usage, p = {num(p)}; random ids: {pct(v['codebook_opt_concept_overlap_random_ids'], 0)}).",
    ]
    return "\n".join(lines) + "\n" + provisional_note(v)


def interval(v: Values, key: str, as_pct: bool = False, sign: bool = False) -> str:
    """``value [low, high]`` of a key recorded with ``_low`` / ``_high``."""
    if as_pct:
        return f"{pct(v[key])} [{100 * v[key + '_low']:.1f}, {100 * v[key + '_high']:.1f}]"
    return f"{num(v[key], sign=sign)} [{num(v[key + '_low'], sign=sign)}, {num(v[key + '_high'], sign=sign)}]"


def render_multiobject(v: Values) -> str:
    """Notebook 14: the pointing game on composites and the concept-token overlap, each beside its control."""
    lines = [
        "| question (750 test composites) | measured | control |",
        "|---|---|---|",
        "| does the composites' IEM name the target? | "
        f"{pct(v['multiobject_iem_test_top1'])} of the images | "
        f"names the distractor: {pct(v['multiobject_iem_predicts_distractor'])} |",
        "| share of the top-5 TIS positions on the target's half (95 % bootstrap over images) | "
        f"**{interval(v, 'multiobject_pointing_top5', as_pct=True)}** | chance "
        f"{pct(v['multiobject_pointing_chance'])}; the same IEM with every layer re-initialised "
        f"{interval(v, 'multiobject_pointing_random_iem', as_pct=True)} |",
        "| a class's first 5 concept ids from the composites' target halves that are also among its first 5 "
        f"from single digits (notebook 06) | {pct(v['multiobject_concept_overlap_top5'], 0)} | "
        f"ids drawn by their usage: {pct(v['multiobject_concept_overlap_top5_chance'], 0)}; "
        "two halves of the test composites "
        f"with each other: {pct(v['multiobject_concept_overlap_top5_split_half'], 0)} |",
    ]
    return "\n".join(lines) + "\n" + provisional_note(v)


MITIGATION = {"colour": "colour (digit 3, red)", "thickness": "thickness (digit 5, thick)"}


def render_mitigation(v: Values) -> str:
    """Notebook 10's token edit: shares before / after / after the control edit with Wilson intervals, and
    the differences (Newcombe) the verdict reads."""
    head = [
        "bias",
        "share of the planted value: before",
        "after the edit",
        "after the control edit",
        "digit kept: before",
        "after the edit",
        "after the control edit",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, name in MITIGATION.items():
        cells = [
            interval(v, f"mitigation_{b}_{what}_{s}")
            for what in ("share", "digit_agreement")
            for s in ("before", "after", "after_random")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for b, name in MITIGATION.items():
        p0, p1 = v[f"mitigation_{b}_share_before"], v[f"mitigation_{b}_share_after"]
        toward = v[f"mitigation_{b}_change_high"] < 0 and abs(p1 - 0.5) < abs(p0 - 0.5)
        beyond = v[f"mitigation_{b}_change_vs_random_high"] < 0
        kept = v[f"mitigation_{b}_digit_change_low"] >= -0.1
        works = toward and beyond and kept
        lines.append(
            f"* **{name}**: change {interval(v, f'mitigation_{b}_change', sign=True)} "
            f"({'toward balance' if toward else 'not toward balance'}); against the control edit "
            f"{interval(v, f'mitigation_{b}_change_vs_random', sign=True)} "
            f"({'beyond it' if beyond else 'not beyond it'}); digit agreement "
            f"{interval(v, f'mitigation_{b}_digit_change', sign=True)} "
            f"({'kept' if kept else 'a drop beyond 0.10 not ruled out'}). "
            + ("**The edit works.**" if works else "**The edit does not work here.**")
            + (
                " The share stays above balance."
                if works and v[f"mitigation_{b}_share_after_low"] > 0.5
                else ""
            )
        )
    return "\n".join(lines) + "\n" + provisional_note(v)


def render_vqvae(v: Values, w: Values) -> str:
    """The two tokenizer families, each from its own preset's expected run (``v`` default, ``w`` vqvae)."""

    def both(key, fmt):
        return tuple(fmt(x[key]) for x in (v, w))

    rows = [
        (
            "tokenizer",
            "taming `VQModel` (`checkpoints/vq_mnist`): 256 learned codes × 32 dims",
            "VQ-VAE with `vector-quantize-pytorch`'s FSQ, levels 8·6·5 (`checkpoints/vqvae_fsq/`): 240 "
            "lattice points, projected to 32 dims",
        ),
        ("`vq_family`", *(f"`{x['vq_family']}`" if x.get("vq_family") else "not recorded" for x in (v, w))),
        ("test PSNR, real digits (bar 24 dB)", *both("vq_test_psnr_db", lambda x: f"{x:.1f} dB")),
        ("codebook usage, real digits (bar 50 %)", *both("vq_codebook_usage", pct)),
        (
            "dataset",
            "generated by the class-conditional transformer",
            "the real digits, encoded (no prior is trained for this family)",
        ),
        ("IEM 1 (VGG) test top-1", *both("iem1_test_top1", pct)),
        (
            "top-TIS masking beats random, pixel / token space",
            *(
                f"{pct(x['image_level_tis_beats_random'], 0)} / "
                f"{pct(x['image_level_tis_beats_random_token_space'], 0)} of the cells"
                for x in (v, w)
            ),
        ),
        (
            "codebook optimisation: evaluators' target probability",
            *(
                f"{x['codebook_target_prob_before']:.2f} → {x['codebook_target_prob_after']:.2f}"
                for x in (v, w)
            ),
        ),
        (
            "tokens changed outside the region",
            *(str(x.get("codebook_tokens_changed_outside_region", "not recorded")) for x in (v, w)),
        ),
    ]
    lines = ["| | default (`--preset default`) | second family (`--preset vqvae`) |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n" + provisional_note(v) + provisional_note(w)


def render_codebook_sizes(study: dict) -> str:
    """The codebook-size study's table (notebook 12 wrote it: one row per size, every figure beside its
    control)."""
    top = study["top"]
    head = [
        "codebook size",
        "test PSNR",
        "codebook usage",
        "IEM 1 test top-1",
        f"share of \\|TIS\\| at the top-{top} positions (even spread)",
        f"distinct ids per class at the top-{top} TIS positions (at {top} random positions)",
        "image-level masking, target prob. drop: top-TIS (random)",
        "top-TIS beats random (cells)",
        "concept-level masking, target logit drop: concept tokens (most frequent)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, row in sorted(study["rows"].items(), key=lambda kv: int(kv[0])):
        r = {c: float("nan") if x is None else x for c, x in row.items()}  # None: the run did not measure it
        lines.append(
            f"| {k} | {r['psnr_db']:.1f} dB | {pct(r['codebook_usage'])} | {pct(r['iem_test_top1'])} | "
            f"{pct(r['tis_top_share'])} ({pct(r['tis_top_share_even'])}) | "
            f"{r['class_distinct_ids_tis']:.1f} ({r['class_distinct_ids_random']:.1f}) | "
            f"{num(r['image_mask_prob_drop_tis'])} ({num(r['image_mask_prob_drop_random'])}) | "
            f"{pct(r['image_mask_tis_beats_random'], 0)} | "
            f"{num(r['concept_mask_logit_drop_concept'])} ({num(r['concept_mask_logit_drop_frequency'])}) |"
        )
    reading = codebook_sizes_reading(study)
    return "\n".join(lines) + f"\n\n{reading}\n\nMeasured on {study['machine']}.\n"


def codebook_sizes_reading(study: dict) -> str:
    """What the table says, computed from it: at which sizes each figure beats its control (a size whose run
    did not measure the figure, None, is named apart)."""
    rows = sorted(study["rows"].items(), key=lambda kv: int(kv[0]))

    def sizes(holds, *figures) -> str:
        unmeasured = [k for k, r in rows if any(r.get(f) is None for f in figures)]
        yes = [k for k, r in rows if k not in unmeasured and holds(*(r[f] for f in figures))]
        no = [k for k, r in rows if k not in unmeasured + yes]
        notes = [f"not at {', '.join(no)}"] * bool(no)
        notes += [f"not measured at {', '.join(unmeasured)}"] * bool(unmeasured)
        return (", ".join(yes) or "no size") + (f" ({'; '.join(notes)})" if notes else "")

    return (
        "Top-TIS masking beats random masking in every cell at "
        + sizes(lambda share: share == 1, "image_mask_tis_beats_random")
        + " codes; the top-5 positions hold more than twice an even share of the |TIS| at "
        + sizes(lambda top, even: top > 2 * even, "tis_top_share", "tis_top_share_even")
        + "; masking a class's concept tokens lowers the evaluators' target logit more than masking its "
        + "most frequent tokens at "
        + sizes(
            lambda concept, frequent: concept > frequent,
            "concept_mask_logit_drop_concept",
            "concept_mask_logit_drop_frequency",
        )
        + "."
    )


TEMPLATES = {
    "models": render_models,
    "results": render_results,
    "bias": render_bias,
    "views": render_views,
    "multiobject": render_multiobject,
    "mitigation": render_mitigation,
    "vqvae": render_vqvae,
    "codebook_sizes": render_codebook_sizes,
}
TWO_FILES = {"vqvae"}  # blocks rendered from the default's and the vqvae preset's expected files


# --- README plumbing -------------------------------------------------------------------------------------


def render_readme(
    text: str,
    expected: dict,
    source: str = "docs/expected_metrics.json",
    expected_vqvae: dict | None = None,
    source_vqvae: str = "docs/expected_metrics_vqvae.json",
    codebook_sizes: dict | None = None,
) -> tuple[str, list[str]]:
    """README text with every block re-rendered, and the names of the blocks found."""
    v = Values(expected, source)
    names = []

    def sub(m):
        name = m["name"]
        if name not in TEMPLATES:
            raise KeyError(
                f"README block {name!r} has no template in benchmarks/readme_results.py ({sorted(TEMPLATES)})"
            )
        names.append(name)
        if name in TWO_FILES:
            if expected_vqvae is None:
                raise KeyError(
                    f"README block {name!r} needs the vqvae preset's expected metrics ({source_vqvae})"
                )
            return m["begin"] + TEMPLATES[name](v, Values(expected_vqvae, source_vqvae)) + m["end"]
        if name == "codebook_sizes":
            if codebook_sizes is None:
                raise KeyError(
                    f"README block {name!r} needs {CODEBOOK_SIZES.relative_to(ROOT)} (make codebook-sizes)"
                )
            return m["begin"] + render_codebook_sizes(codebook_sizes) + m["end"]
        return m["begin"] + TEMPLATES[name](v) + m["end"]

    out = BLOCK.sub(sub, text)
    begins = re.findall(r"<!-- expected:begin ([\w-]+)", text)
    if sorted(begins) != sorted(names):
        raise ValueError(f"README blocks without a matching end marker: {sorted(set(begins) - set(names))}")
    if len(set(names)) != len(names):
        raise ValueError(f"README has a block twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
    return out, names


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # `make benchmarks` runs every script here without arguments: nothing to do
        print("usage: readme_results.py --check | --write [--expected docs/expected_metrics.json]")
        print("readme_results=usage (needs --check or --write; nothing done)")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 with a diff when README.md is out of date")
    mode.add_argument("--write", action="store_true", help="rewrite the generated blocks in README.md")
    ap.add_argument("--expected", default=str(EXPECTED), help="the expected metrics (%(default)s)")
    ap.add_argument(
        "--expected-vqvae",
        default=str(EXPECTED_VQVAE),
        help="the vqvae preset's expected metrics, for the vqvae block (%(default)s)",
    )
    ap.add_argument("--readme", default=str(README), help="the README to check or rewrite (%(default)s)")
    args = ap.parse_args(argv)
    vqvae_path = Path(args.expected_vqvae)
    expected_path, readme = Path(args.expected), Path(args.readme)
    for p in (expected_path, readme):
        if not p.is_file():
            print(
                f"error: {p} does not exist"
                + (" (benchmarks/make_expected.py writes it)" if p == expected_path else ""),
                file=sys.stderr,
            )
            return 2
    text = readme.read_text()
    new, names = render_readme(
        text,
        json.loads(expected_path.read_text()),
        str(args.expected),
        json.loads(vqvae_path.read_text()) if vqvae_path.is_file() else None,
        str(args.expected_vqvae),
        json.loads(CODEBOOK_SIZES.read_text()) if CODEBOOK_SIZES.is_file() else None,
    )
    if not names:
        print(f"error: {readme} has no <!-- expected:begin NAME --> blocks", file=sys.stderr)
        return 2
    old_blocks = {m["name"]: m["body"] for m in BLOCK.finditer(text)}
    outdated = [
        n for n, body in ((m["name"], m["body"]) for m in BLOCK.finditer(new)) if old_blocks[n] != body
    ]
    if args.write:
        if new != text:
            sys.path.insert(0, str(ROOT))
            from cortex_run.artifacts import atomic_path

            with atomic_path(readme) as tmp:
                tmp.write_text(new)
        print(f"{readme}: {len(outdated)} of {len(names)} blocks rewritten from {expected_path}")
    elif outdated:
        sys.stdout.writelines(
            difflib.unified_diff(
                text.splitlines(True),
                new.splitlines(True),
                f"{readme}",
                f"{readme} rendered from {expected_path}",
            )
        )
        print(
            f"{readme} is out of date in block(s) {', '.join(outdated)}: run "
            f"python benchmarks/readme_results.py --write"
            + (f" --expected {args.expected}" if expected_path != EXPECTED else "")
        )
    else:
        print(f"{readme}: all {len(names)} blocks match {expected_path}")
    print(f"readme_blocks={len(names)} readme_outdated={len(outdated)}")
    return 1 if outdated and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
