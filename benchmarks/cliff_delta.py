"""Cliff's delta: the binary-search version (cortex_utils.bias) vs the original's O(N·M) pair loop, at
N = M = 2000 per-image token counts, in one process. Last line: cliff_speedup=<x> cliff_equal=<0|1>
"""

import time

import numpy as np

from cortex_utils import bias


def pairwise(a, b):
    greater = less = 0
    for x in a:
        for y in b:
            greater += x > y
            less += x < y
    return (greater - less) / (len(a) * len(b))


def main(n=2000, repeats=5):
    rng = np.random.default_rng(0)
    a, b = rng.poisson(3.0, n).tolist(), rng.poisson(2.5, n).tolist()
    fast = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        d_fast = bias.cliffs_delta(a, b)
        fast.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    d_slow = pairwise(a, b)
    slow = time.perf_counter() - t0
    equal = abs(d_fast - d_slow) < 1e-12
    print(f"N = M = {n}: pair loop {slow:.2f} s, binary search {min(fast) * 1e3:.2f} ms; delta {d_fast:.4f} vs {d_slow:.4f}")
    print(f"cliff_speedup={slow / min(fast):.0f} cliff_equal={int(equal)}")


if __name__ == "__main__":
    main()
