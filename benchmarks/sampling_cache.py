"""Generation speed: our key/value-cached sampler vs the uncached loop of taming's
Net2NetTransformer.sample (the whole prefix through the transformer again for every new token; written out
here, since our CondTransformer keeps taming's submodules but not its Lightning methods), same model, same
batch, one process, side by side.

Last line: sampling_speedup=<x> sampling_images_per_second=<y>
"""

import time

import torch

from cortex_run import SHIPPED_CHECKPOINTS, tokenizers
from cortex_run import generation as gen
from cortex_run.checkpoints import read_card
from cortex_utils import vq as vqlib


@torch.no_grad()
def uncached_sample(tf, labels, steps: int, top_k: int) -> torch.Tensor:
    """taming's sampling algorithm without a cache: the class token, then ``steps`` tokens, each drawn from
    the top-``top_k`` logits of a forward pass over everything drawn so far."""
    x = labels[:, None].long()
    for _ in range(steps):
        logits, _ = tf.transformer(x)
        logits = logits[:, -1, :]
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
        x = torch.cat([x, torch.multinomial(logits.softmax(-1), 1)], dim=1)
    return x[:, 1:]


def main(batch: int = 200, repeats: int = 3) -> None:
    torch.manual_seed(0)
    vq_path, tf_path = (
        SHIPPED_CHECKPOINTS / "vq_mnist.safetensors",
        SHIPPED_CHECKPOINTS / "transformer_mnist.safetensors",
    )
    vq = tokenizers.load_vq(read_card(vq_path)["config"], vq_path)
    tf = gen.load_transformer(read_card(tf_path)["config"], tf_path, vq=vq)
    labels = torch.arange(batch) % 10
    steps = vqlib.grid_shape(vq)[0] * vqlib.grid_shape(vq)[1]
    cached, reference = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen.sample_tokens(tf, labels, top_k=50, progress=False)
        cached.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        uncached_sample(tf, labels, steps, top_k=50)
        reference.append(time.perf_counter() - t0)
    c, r = min(cached), min(reference)
    print(f"batch {batch}, {steps} tokens each, best of {repeats}: cached {c:.2f} s, uncached {r:.2f} s")
    print(f"sampling_speedup={r / c:.2f} sampling_images_per_second={batch / c:.1f}")


if __name__ == "__main__":
    main()
