"""Why a secure-aggregation message or step was refused.

Each refusal carries a short stable reason (`bad_signature`, `late`, `not_dropped`, ...) that is
both the counter name and the first words of the log line, like the transport's rejections.
"""


class SecAggError(ValueError):
    """A secure-aggregation input failed a check; `reason` is the stable counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
