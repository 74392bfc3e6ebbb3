"""Progress bars: tqdm's widget in JupyterLab, plain text where no one watches a widget.

A notebook run through papermill is saved with each widget bar's first frame ("0%|"), however far the bar got.
So when ``CORTEX_PLAIN_PROGRESS`` is set (the pipeline sets it for its kernels; set it yourself when you run
papermill directly) the bars are tqdm's plain text bars on stdout, redrawn at most every 30 s: the saved
notebook shows each bar's last state, finished. Use ``tqdm`` from here as tqdm's own.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm as auto_tqdm


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm``, or with ``CORTEX_PLAIN_PROGRESS`` set, a plain bar on stdout."""
    if os.environ.get("CORTEX_PLAIN_PROGRESS"):
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("mininterval", 30.0)
        return plain_tqdm(*args, **kwargs)
    return auto_tqdm(*args, **kwargs)
