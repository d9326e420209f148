"""Fixed-point integer encoding of B updates into Z_2^32, so that masked sums add up exactly.

The blockwise int8 codec gives every box its own scale per block; integers coded with
different scales do not add. Under masking the aggregator sees only the sum, so every box
codes with one shared step announced for the round:

    step = value_bound / 127
    q    = clip(rint(x / step), -127, 127)          the int8 code of one B coordinate
    v    = weight * q  (mod 2^32)                  what is masked and summed

`weight` is the box's sample count capped at `max_weight`; it is sent in the clear (as the
sample count is without masking), so the aggregator divides the decoded sum by the total
weight and gets the sample-weighted mean exactly as plain FedAvg would (up to the int8 step).

No wrap-around: every |v| <= 127 * max_weight, so for n boxes |sum| <= n * 127 * max_weight,
which must stay below 2^31 for the sum to be read back as a signed 32-bit integer. Hence at
most `max_participants(max_weight) = floor((2^31 - 1) / (127 * max_weight))` boxes per round
(16,513 with the default max_weight 1024).

Values beyond +-value_bound are clipped on the box (counted, so the operator can raise the
bound); the error of every other value is at most step / 2.
"""

from dataclasses import dataclass

import numpy as np

from appliance.federation.updates import Delta, GlobalAdapter

LEVELS = 127
MODULUS = 1 << 32
SIGNED_LIMIT = (1 << 31) - 1

Layout = tuple[tuple[str, int, int], ...]
"""(tensor name, rows, columns) of each B in the order the vector holds them."""


def max_participants(max_weight: int) -> int:
    """The most boxes whose weighted codes can be summed without wrapping modulo 2^32."""
    return SIGNED_LIMIT // (LEVELS * max_weight)


def layout_of(base: GlobalAdapter) -> Layout:
    """The round's vector layout: every B of the global adapter, by sorted tensor name."""
    return tuple((name, *base.factors[name][1].shape) for name in sorted(base.factors))


def layout_size(layout: Layout) -> int:
    """Number of coordinates (uint32 values) a vector of this layout holds."""
    return sum(rows * cols for _, rows, cols in layout)


@dataclass(frozen=True)
class Encoded:
    """A box's integer vector and what the encoding cost."""

    values: np.ndarray
    """uint32, weight * code modulo 2^32, in layout order."""
    weight: int
    clipped: int
    """Coordinates beyond +-value_bound (clipped to it)."""


@dataclass(frozen=True)
class FixedPoint:
    """The shared step and weight cap of one round."""

    value_bound: float
    max_weight: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.value_bound) and self.value_bound > 0):
            raise ValueError(f"value_bound must be a positive finite number ({self.value_bound})")
        if not 1 <= self.max_weight <= SIGNED_LIMIT // LEVELS:
            raise ValueError(f"max_weight {self.max_weight} is out of range")

    @property
    def step(self) -> float:
        """The value of one int8 code unit."""
        return self.value_bound / LEVELS

    def weight_for(self, sample_count: int) -> int:
        """A box's weight: its sample count, capped at max_weight."""
        if sample_count < 1:
            raise ValueError(f"sample_count must be positive (got {sample_count})")
        return min(sample_count, self.max_weight)

    def check_participants(self, count: int) -> None:
        """Refuse a round too large for its sum to fit in a signed 32-bit integer."""
        limit = max_participants(self.max_weight)
        if count > limit:
            raise ValueError(
                f"{count} participants could wrap the masked sum modulo 2^32; at most {limit} "
                f"with max_weight {self.max_weight}"
            )

    def encode(self, deltas: dict[str, Delta], layout: Layout, sample_count: int) -> Encoded:
        """B deltas -> weighted int8 codes modulo 2^32 in layout order."""
        weight = self.weight_for(sample_count)
        parts, clipped = [], 0
        for name, rows, cols in layout:
            b = np.asarray(deltas[name].b, dtype=np.float64)
            if b.shape != (rows, cols):
                raise ValueError(f"{name}: B shape {b.shape} != layout {(rows, cols)}")
            if not np.isfinite(b).all():
                raise ValueError(f"{name}: NaN or infinite values; refusing to encode")
            codes = np.rint(b.ravel() / self.step)
            clipped += int(np.count_nonzero(np.abs(codes) > LEVELS))
            parts.append(np.clip(codes, -LEVELS, LEVELS).astype(np.int64))
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return Encoded((flat * weight).astype(np.uint32), weight, clipped)

    def reconstruct(self, encoded: Encoded, layout: Layout) -> dict[str, np.ndarray]:
        """What the aggregator will credit a box with (for error feedback on the box)."""
        signed = encoded.values.view(np.int32).astype(np.float64) / encoded.weight
        return _split(signed * self.step, layout)

    def decode_sum(
        self, total: np.ndarray, total_weight: int, layout: Layout
    ) -> dict[str, np.ndarray]:
        """Unmasked sum of the reporting boxes' vectors -> sample-weighted mean B delta.

        Raises ValueError when a coordinate lies outside what the reporting boxes could have
        produced (`|sum| <= 127 * total_weight`): a wrong seed or a forged update, never a
        legitimate sum.
        """
        signed = np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.int64)
        if signed.size != layout_size(layout):
            raise ValueError(f"sum has {signed.size} values, the layout {layout_size(layout)}")
        bound = LEVELS * total_weight
        if signed.size and int(np.abs(signed).max()) > bound:
            raise ValueError(
                f"unmasked sum exceeds {bound} = 127 x total weight: a mask was not removed "
                "(wrong seed) or an update is forged"
            )
        return self.decode_signed(signed, total_weight, layout)

    def decode_signed(
        self, signed: np.ndarray, total_weight: int, layout: Layout
    ) -> dict[str, np.ndarray]:
        """A checked signed sum (any ring) -> the sample-weighted mean B delta."""
        if signed.size != layout_size(layout):
            raise ValueError(f"sum has {signed.size} values, the layout {layout_size(layout)}")
        return _split(np.asarray(signed, np.float64) * self.step / total_weight, layout)


def _split(flat: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for name, rows, cols in layout:
        out[name] = flat[offset : offset + rows * cols].reshape(rows, cols).astype(np.float32)
        offset += rows * cols
    return out
