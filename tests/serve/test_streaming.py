"""`stream` on the tiny model: the pieces a client is sent join to the generation's text, and
none has to be taken back when a stop string completes."""

from appliance.llm.runtime import Runtime, Sampling
from appliance.llm.streaming import stream
from tests.serve.conftest import fresh_text

PROMPT = "The pump on line 3"


def test_text_that_may_begin_a_stop_string_is_held_back(reference: Runtime) -> None:
    free = fresh_text(reference, PROMPT, max_tokens=40, seed=0)
    stop = free[10:13]  # three characters the unconstrained run produces, one token each
    pieces: list[str] = []
    result = stream(reference, PROMPT, Sampling(40, 1.0, 1.0, 0, (stop,)), pieces.append)
    assert result.finish_reason == "stop"
    assert result.text == free[: free.index(stop)]
    assert len(pieces) > 1
    assert "".join(pieces) == result.text  # a sent start of the stop string would show here
