"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer); not part of CI.

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_harness.py TARGET [libFuzzer flags, e.g. -runs=100000]

TARGET is one of: update, envelope, chunk, sparkplug, config, spool, adapter, audit. A target
passes an input when the parser returns a value or raises its documented error; any other
exception is a finding (libFuzzer saves the input as crash-<sha1> in the current directory;
replay it with the same command and the file as the last argument). The hypothesis tests in
this folder are the CI part; this script keeps a corpus-driven search going for as long as
one lets it.
"""

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from appliance.config.loading import load_config
    from appliance.data.records import parse_record
    from appliance.errors import AdapterError, ConfigError
    from appliance.federation.audit import AuditError, verify
    from appliance.federation.codec import DecodeError, decode_update
    from appliance.llm.adapters import read_adapter
    from appliance.telemetry.sparkplug import SparkplugError, decode
    from appliance.transport.rejects import RejectedError
    from appliance.transport.wire import Manifest, decode_chunk, open_envelope

sys.path.insert(0, str(Path(__file__).parents[2]))
import contextlib

from tests.fuzz import test_files_and_telemetry as files
from tests.fuzz import test_transport_wire as wire
from tests.fuzz import test_update_codec as codec

WORK = Path(tempfile.mkdtemp(prefix="atheris-"))


def _file_target(name: str, parse: Callable[[Path], object], errors: tuple[type, ...]):
    path = WORK / name

    def run(data: bytes) -> None:
        path.write_bytes(data)
        with contextlib.suppress(errors):
            parse(path)

    return run


def _update(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_update(data, codec.BASE, codec.LIMIT)


def _envelope(data: bytes) -> None:
    with contextlib.suppress(RejectedError):
        open_envelope(data, "box-1", wire.TRUST, Manifest)


def _chunk(data: bytes) -> None:
    with contextlib.suppress(RejectedError):
        decode_chunk(data)


def _sparkplug(data: bytes) -> None:
    with contextlib.suppress(SparkplugError):
        decode(data, max_bytes=4096, known=files.KNOWN)


def _spool(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_record(data, 1)


TARGETS: dict[str, tuple[Callable[[bytes], None], bytes]] = {
    "update": (_update, codec.VALID[0]),
    "envelope": (_envelope, wire.SEALED[0][1]),
    "chunk": (_chunk, wire.VALID_CHUNK),
    "sparkplug": (_sparkplug, files.BIRTH),
    "config": (_file_target("config.toml", load_config, (ConfigError,)), files.CONFIG),
    "spool": (_spool, files.LINES[1]),
    "adapter": (_file_target("a.gguf", read_adapter, (AdapterError,)), files.ADAPTER),
    "audit": (_file_target("audit.jsonl", verify, (AuditError,)), b""),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target, seed = TARGETS[sys.argv[1]]
    corpus = WORK / "corpus"
    corpus.mkdir()
    (corpus / "seed").write_bytes(seed)
    args = [sys.argv[0], *sys.argv[2:]]
    if not any(not a.startswith("-") for a in sys.argv[2:]):
        args.append(str(corpus))  # start from a valid input unless given a corpus or a crash
    atheris.Setup(args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
