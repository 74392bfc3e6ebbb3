"""CORTEX, the run around the method (``cortex_utils``, which never imports this package).

The house: pipeline (papermill runner, presets), notebook, artifacts, checkpoints, cache, prepare, report,
plots, compare, codebook_sizes, distributed (torchrun), passes (SmoothGrad's passes from a memory budget).
The embedded world: tokenizers (families taming_vq, vqvae), digits, datasets, generation, evaluators,
planted_bias, composites, mitigation.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINTS = REPO_ROOT / "checkpoints"
SHIPPED_DATA = REPO_ROOT / "data" / "default"  # the token datasets the default run reads (cards beside them)
DEFAULT_FAMILY = "taming_vqgan"  # the tokenizer family of the default run (tokenizers.FAMILIES)


def shipped_checkpoints(family: str = DEFAULT_FAMILY) -> Path:
    """Where the models of a tokenizer family are shipped: ``checkpoints/`` or ``checkpoints/<family>/``."""
    return SHIPPED_CHECKPOINTS if family == DEFAULT_FAMILY else SHIPPED_CHECKPOINTS / family


def rebuild_command(family: str = DEFAULT_FAMILY) -> str:
    """The command that rebuilds a family's shipped files (written on the cards of what it trains)."""
    return "make checkpoints" if family == DEFAULT_FAMILY else f"make checkpoints-{family.split('_')[0]}"


def shipped_data(family: str = DEFAULT_FAMILY) -> Path:
    """Where a tokenizer family's token datasets are shipped: ``data/default/`` or ``data/<family>/``."""
    return SHIPPED_DATA if family == DEFAULT_FAMILY else REPO_ROOT / "data" / family
