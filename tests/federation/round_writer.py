"""Helper process for the kill -9 test: opens a round and offers updates forever.

Prints `accepted <node>` only after the store returned (the commit is done), so the test
knows which updates the aggregator had acknowledged when it was killed.
"""

import sys
import time
from pathlib import Path

from appliance.federation.rounds import RoundSpec, RoundStore, StoredUpdate
from tests.federation.plans import training_plan


def main(db: Path, boxes: int) -> None:
    store = RoundStore(db)
    if store.current() is None:
        spec = RoundSpec(
            "r1", 0, training_plan(), tuple(f"box{i}" for i in range(boxes)), boxes, 1, 3600
        )
        store.open_round(spec, time.time())
    for i in range(boxes):
        node = f"box{i}"
        offer = store.offer(
            "r1", StoredUpdate(node, f"{i:064x}", 10 + i, b"x" * 1000 * (i + 1)), time.time()
        )
        print(offer.verdict.value, node, flush=True)
        time.sleep(0.05)
    time.sleep(3600)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
