"""Generation speed: our key/value-cached sampler vs taming's own Net2NetTransformer.sample (which re-runs
the whole prefix for every new token), same model, same batch, one process, side by side.

Last line: sampling_speedup=<x> sampling_images_per_second=<y>
"""

import time

import torch

from cortex_utils import SHIPPED_CHECKPOINTS
from cortex_utils import generation as gen
from cortex_utils import vq as vqlib
from cortex_utils.checkpoints import read_card


def main(batch: int = 200, repeats: int = 3) -> None:
    torch.manual_seed(0)
    vq_path, tf_path = (
        SHIPPED_CHECKPOINTS / "vq_mnist.safetensors",
        SHIPPED_CHECKPOINTS / "transformer_mnist.safetensors",
    )
    vq = vqlib.load_vq(read_card(vq_path)["config"], vq_path)
    tf = gen.load_transformer(read_card(tf_path)["config"], tf_path, vq=vq)
    labels = torch.arange(batch) % 10
    steps = vqlib.grid_shape(vq)[0] * vqlib.grid_shape(vq)[1]
    cached, reference = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        gen.sample_tokens(tf, labels, top_k=50, progress=False)
        cached.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        tf.sample(labels[:, :0].long(), labels[:, None], steps=steps, sample=True, top_k=50)
        reference.append(time.perf_counter() - t0)
    c, r = min(cached), min(reference)
    print(f"batch {batch}, {steps} tokens each, best of {repeats}: cached {c:.2f} s, taming sample {r:.2f} s")
    print(f"sampling_speedup={r / c:.2f} sampling_images_per_second={batch / c:.1f}")


if __name__ == "__main__":
    main()
