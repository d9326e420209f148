"""JSON Lines records, the held-out split and token windows: bad lines are skipped, never fatal."""

from pathlib import Path

import numpy as np
import pytest

from appliance.data.records import Record, read_records
from appliance.data.windows import split_heldout, token_windows
from appliance.errors import DataError

GOOD_TEXT = b'{"text": "pump P-101 vibrates"}\n'
GOOD_PAIR = b'{"prompt": "alarm E42?", "completion": "clear the magazine"}\n'


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json at all\n", "line 2: not valid JSON (Expecting value at column 1)"),
        (b'{"text": "cut off in the midd', "line 2: not valid JSON (Unterminated string"),
        (b"[1, 2]\n", "line 2: expected a JSON object, got list"),
        (b'{"text": 5}\n', 'line 2: "text" must be a string, got int'),
        (b'{"text": null}\n', 'line 2: "text" must be a string, got NoneType'),
        (b'{"text": NaN}\n', "line 2: NaN is not a number JSON allows"),
        (b'{"text": "  "}\n', 'line 2: "text" is empty'),
        (
            b'{"prompt": "only a prompt"}\n',
            'line 2: expected the keys {"text"} or {"prompt", "completion"}, got {"prompt"}',
        ),
        (b'{"text": "a", "extra": 1}\n', 'got {"extra", "text"}'),
        (b"{}\n", "got an empty object"),
        (b'{"text": "caf\xe9"}\n', "line 2: not valid UTF-8 (byte 13)"),
        (b'{"text": "' + b"x" * 2000 + b'"}\n', "line 2: line is 2013 bytes, more than 1000"),
    ],
)
def test_a_bad_line_is_reported_with_its_number_and_skipped(
    tmp_path: Path, line: bytes, reason: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(
        GOOD_TEXT + line + b"\n" + GOOD_PAIR
        if line.endswith(b"\n")
        else GOOD_TEXT + GOOD_PAIR + line
    )
    result = read_records(path, max_line_bytes=1000)
    assert [r.text or r.prompt for r in result.records] == ["pump P-101 vibrates", "alarm E42?"]
    assert len(result.bad_lines) == 1
    bad = str(result.bad_lines[0])
    if not line.endswith(b"\n"):  # a truncated last line is line 3
        reason = reason.replace("line 2", "line 3")
    assert bad.startswith(reason) or reason in bad


def test_records_keep_their_fields_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n" + GOOD_TEXT + b"   \n" + GOOD_PAIR)
    result = read_records(path)
    assert result.records == [
        Record(2, text="pump P-101 vibrates"),
        Record(4, prompt="alarm E42?", completion="clear the magazine"),
    ]
    assert result.bad_lines == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no usable record (the file is empty)"),
        (
            b"oops\n[]\n",
            "no usable record (line 1: not valid JSON (Expecting value at column 1); line 2: expected a JSON object, got list)",
        ),
    ],
)
def test_a_file_without_any_usable_record_is_an_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_records(path)


def test_missing_file_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file does not exist"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        read_records(tmp_path)


def test_heldout_split_is_fixed_by_the_seed_and_never_empties_training() -> None:
    items = list(range(20))
    train, held = split_heldout(items, 0.1, seed=3)
    assert split_heldout(items, 0.1, seed=3) == (train, held)
    assert len(held) == 2 and sorted(train + held) == items
    assert split_heldout(items, 0.1, seed=4)[1] != held
    assert split_heldout([1, 2], 0.5, seed=0)[0] != []
    assert split_heldout([1], 0.5, seed=0) == ([1], [])
    assert split_heldout(items, 0.0, seed=0) == (items, [])


def test_windows_hold_inputs_and_next_token_labels() -> None:
    stream = list(range(1, 1001))
    windows = token_windows(stream, 256, 128)
    assert windows.data.dtype == np.int32 and windows.data.shape == (len(windows), 256)
    assert len(windows) == 1 + (1000 - 257) // 128
    assert (windows.labels[:, :-1] == windows.data[:, 1:]).all()
    assert windows.data[1, 0] == 129 and not windows.repeated


def test_a_short_stream_is_repeated_to_fill_one_window() -> None:
    windows = token_windows([5, 6, 7], 256, 256)
    assert len(windows) == 1 and windows.repeated and windows.stream_tokens == 3
    assert windows.data[0, :6].tolist() == [5, 6, 7, 5, 6, 7]
