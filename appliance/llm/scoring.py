"""Held-out NLL of records: the number `appliance eval` and the trainer report.

Texts are tokenized the way the trainer tokenizes them (chat markers as special tokens), then
scored in windows of the runtime's context with `Runtime.logits`, so the NLL measures what
the adapter was trained on.
"""

from collections.abc import Sequence

import numpy as np

from appliance.llm.runtime import NllResult, Runtime
from appliance.llm.texts import tokenize


def texts_nll(runtime: Runtime, texts: Sequence[str]) -> NllResult:
    """Summed NLL of every token given the ones before it (first token of a window is context)."""
    total, count = 0.0, 0
    window = runtime.context_tokens
    for text in texts:
        # Runtime.tokenize parses no special tokens; the trainer's tokens need the model handle.
        tokens = tokenize(runtime._model, text)
        for start in range(0, max(len(tokens) - 1, 0), window):
            chunk = tokens[start : start + window]
            if len(chunk) < 2:
                continue
            logits = runtime.logits(chunk)[:-1].astype(np.float64)
            targets = np.asarray(chunk[1:])
            peak = logits.max(axis=1, keepdims=True)
            log_z = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
            total += float((log_z - logits[np.arange(len(targets)), targets]).sum())
            count += len(targets)
    return NllResult(total, count)
