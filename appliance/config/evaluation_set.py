"""The plant evaluation set (`[evaluation_set]` in the aggregator's file; optional).

A plant may publish questions it is willing to share with every box: JSON Lines records in
the spool's format (`{"text": ...}` or `{"prompt": ..., "completion": ...}`, one per line).
The aggregator sends the file to each participant once per content (a signed artifact of
kind `evaluation_set`), and every box scores the base model, its local adapter and the
global one on it beside its own held-out data. A box's own data only says how well an
adapter knows that box's line; the plant set says how well it knows the plant, which is what
federating is for (docs/protocol.md).
"""

from typing import Annotated

from pydantic import AfterValidator, Field

from appliance.config.base import ConfigPath, Section, existing_file

BOX_MAX_BYTES = 8 * 1024 * 1024
"""The largest evaluation set a box takes (it refuses a larger one whatever it is sent)."""
BOX_MAX_RECORDS = 20_000
"""The most records a box takes in an evaluation set."""


class EvaluationSetSettings(Section):
    """Where the plant's shared questions are, and the limits the aggregator holds them to."""

    path: Annotated[ConfigPath, AfterValidator(existing_file)] = Field(
        description="JSON Lines file of the questions the plant shares with every box (the "
        "spool's format: text, or prompt and completion). Read at each round's opening: a "
        "changed file is sent again; a file that breaks a limit or holds a bad line is not "
        "sent (logged), and boxes keep the set they have.",
    )
    max_records: int = Field(
        default=2000,
        ge=1,
        le=BOX_MAX_RECORDS,
        description="A file with more records is not sent. Every box scores every record "
        "three times per global adapter (base, local, global), so this bounds its work; the "
        "task metric scores only `[evaluation] max_task_records` prompts of it on the box.",
    )
    max_bytes: int = Field(
        default=1024 * 1024,
        ge=1,
        le=BOX_MAX_BYTES,
        description="A larger file is not sent (boxes refuse more than 8 MiB anyway).",
    )
