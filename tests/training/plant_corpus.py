"""A small plant-maintenance corpus: texts and prompt/completion pairs (chat template)."""

import json
from pathlib import Path

FACTS = [
    (
        "What does alarm E42 on the line 3 packer mean?",
        "Alarm E42 means the carton magazine sensor is blocked. Clear the magazine, reset the sensor and restart from the HMI.",
    ),
    (
        "Pump P-101 shows high vibration. What should I check?",
        "Check the bearing temperature and the coupling alignment of pump P-101 before restarting it.",
    ),
    (
        "How often is the compressor C-7 oil filter changed?",
        "The oil filter of compressor C-7 is changed every 2000 running hours or at the yearly stop.",
    ),
    (
        "The conveyor belt B-12 drifts to the left. What is the fix?",
        "Adjust the tail pulley take-up on conveyor B-12 a quarter turn on the left side and watch the tracking.",
    ),
]


def write_plant_corpus(path: Path, repeats: int = 6) -> Path:
    """Every fact as a pair and as plain text, repeated; one bad line to skip."""
    lines = []
    for _ in range(repeats):
        for prompt, completion in FACTS:
            lines.append(json.dumps({"prompt": prompt, "completion": completion}))
            lines.append(json.dumps({"text": f"{prompt} {completion}"}))
    lines.insert(5, '{"prompt": "no completion"}')
    path.write_text("\n".join(lines) + "\n")
    return path
