"""CORTEX, the method: one module per step of the paper, on tensors, arrays and the tokenizer protocol.

vq           the tokenizer protocol: encode, embed, decode a grid of codebook ids
iem          the information extractor models (four architectures) on token-embedding grids
tis          token importance scores: SmoothGrad and the other attributions
concepts     concept tokens per class from the TIS; frequency baselines
evaluation   explanations evaluated by masking (pixel / token space): image level, concept level
optimization codebook-level explanation: optimize a region's tokens or embeddings for a target class
bias         bias detection: attribute tokens counted in neutral generations, and its statistics
sanity       can we trust an attribution? sanity checks, deletion / insertion curves

The run around it (runner, presets, caches, cards, torchrun) and the embedded world the tutorial runs on
(tokenizer families, digits, token datasets, generator, evaluators, planted worlds) are ``cortex_run``,
which imports this package and is never imported by it.
"""
