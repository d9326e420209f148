"""Error feedback: what lossy compression dropped stays on the box and joins the next update.

Aggressive top-k sparsification only converges with it (Stich 2018; Karimireddy 2019): the
sum of everything sent plus the residual always equals the sum of the true updates.
"""

from pathlib import Path

import numpy as np

from appliance.federation.updates import Delta


class ErrorFeedback:
    """The per-tensor residual of one box, persisted across restarts."""

    def __init__(self, residual: dict[str, Delta] | None = None) -> None:
        self.residual: dict[str, Delta] = dict(residual or {})

    def corrected(self, deltas: dict[str, Delta]) -> dict[str, Delta]:
        """This round's true deltas plus what earlier rounds left out."""
        out = {}
        for name, delta in deltas.items():
            kept = self.residual.get(name)
            if kept is None:
                out[name] = delta
                continue
            a = None if delta.a is None or kept.a is None else delta.a + kept.a
            out[name] = Delta(a, delta.b + kept.b)
        return out

    def remember(self, corrected: dict[str, Delta], sent: dict[str, Delta]) -> None:
        """Keep what was meant (`corrected`) but not sent (`sent` as the receiver sees it)."""
        self.residual = {
            name: Delta(
                None if delta.a is None or sent[name].a is None else delta.a - sent[name].a,
                delta.b - sent[name].b,
            )
            for name, delta in corrected.items()
        }

    def save(self, path: Path) -> None:
        """Write the residual atomically as .npz."""
        arrays = {}
        for name, delta in self.residual.items():
            arrays[f"{name}|b"] = delta.b
            if delta.a is not None:
                arrays[f"{name}|a"] = delta.a
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ErrorFeedback":
        """Read a residual written by `save`; a missing file means no residual yet."""
        if not path.exists():
            return cls()
        with np.load(path) as data:
            parts: dict[str, dict[str, np.ndarray]] = {}
            for key in data.files:
                name, _, part = key.rpartition("|")
                parts.setdefault(name, {})[part] = data[key]
        return cls({name: Delta(p.get("a"), p["b"]) for name, p in parts.items()})
