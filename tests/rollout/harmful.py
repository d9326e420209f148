"""A harmful box's plant data: records shaped like the canary line's, filled with noise.

What was tried first, on the tiny test model, with the box sending 400 such records next to
three honest boxes (120 records each, ~95 for training) in round 2, and the canary's held-out
NLL with the resulting global adapter against the 5.15 nats/token of v1:
- completions permuted among the canary line's records (shuffled labels): 4.78, better;
- shuffled and character-scrambled completions: 4.82, better;
- shuffled completions replaced by capital letters and digits, real prompts: 4.99, better.
The tiny model mostly learns the line's alphabet and word shapes, which any of these still
teach. So the harmful records are made harmful by construction: prompt and completion
keep the length and spaces of a real record of the canary's line (completions shuffled
among records first), and every other character is a random capital letter or digit, which
the line never writes. Training on them moves probability away from the line's language.
The test gives the honest boxes 60 records each and this box 800 (its sample count weighs
~80% in FedAvg): the canary measured 5.16 with v1 and 5.27 with v2 (the same with 120 and
1500 records: 5.15 and 5.21).
"""

import random
import string

from appliance.data.synthetic import ProductionLine, maintenance_records

_NOISE = string.ascii_uppercase + string.digits


def harmful_records(line: ProductionLine, count: int, seed: int) -> list[dict[str, str]]:
    """`count` prompt/completion records shaped like `line`'s, with noise for text."""
    pairs = [r for r in maintenance_records(line, 2 * count, seed=seed) if "prompt" in r][:count]
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    return [
        {
            "prompt": _noise(pairs[i]["prompt"], rng),
            "completion": _noise(pairs[j]["completion"], rng),
        }
        for i, j in enumerate(order)
    ]


def _noise(text: str, rng: random.Random) -> str:
    return "".join(c if c == " " else rng.choice(_NOISE) for c in text)
