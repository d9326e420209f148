"""The box's data spool: JSON Lines files dropped into a directory become training data.

Plant systems drop `*.jsonl` files into the spool directory (write to another name, then
rename: a file is taken only once it carries the `.jsonl` suffix). Each line is validated on
its own; good records are stored once (duplicates across files are dropped by content hash),
bad lines go to `quarantine/<file>.rejected.jsonl` with their line number and reason, and the
file is moved to `processed/`. Each record is assigned to training or held-out when it first
arrives and keeps that assignment forever, so held-out numbers stay comparable across rounds.
Nothing here ever leaves the box.
"""

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from appliance.data.records import MAX_LINE_BYTES, Record, parse_record
from appliance.system.sqlite import Durability, open_db

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    sha256 TEXT PRIMARY KEY,
    heldout INTEGER NOT NULL,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    line INTEGER NOT NULL
);
"""
_QUARANTINE_EXCERPT_BYTES = 200


@dataclass
class IngestReport:
    """What one pass over the spool did."""

    files: int = 0
    added: int = 0
    duplicates: int = 0
    quarantined: int = 0
    failed_files: list[str] = field(default_factory=list)


class Spool:
    """Ingests the spool directory into the box's record store."""

    def __init__(self, spool_dir: Path, state_dir: Path, node_id: str, heldout_fraction: float):
        self.spool_dir = spool_dir
        self.processed_dir = spool_dir / "processed"
        self.quarantine_dir = spool_dir / "quarantine"
        for folder in (spool_dir, self.processed_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._node_id = node_id
        self._heldout_fraction = heldout_fraction
        # FULL: a file moves to processed/ right after its COMMIT, so a commit that a power
        # cut could undo would lose its records for good.
        self._db = open_db(state_dir / "records.sqlite", durability=Durability.FULL, schema=_SCHEMA)

    def close(self) -> None:
        """Close the record store."""
        self._db.close()

    def ingest(self) -> IngestReport:
        """Take every complete `*.jsonl` file in the spool; one bad file never stops the rest."""
        report = IngestReport()
        for path in sorted(self.spool_dir.glob("*.jsonl")):
            try:
                self._ingest_file(path, report)
            except OSError as exc:
                log.error("spool: cannot ingest %s: %s; left in place", path.name, exc)
                report.failed_files.append(path.name)
        return report

    def _ingest_file(self, path: Path, report: IngestReport) -> None:
        if not path.is_file():
            raise OSError(f"{path.name} is not a regular file")
        rejected: list[dict[str, object]] = []
        with path.open("rb") as handle:
            self._db.execute("BEGIN")
            try:
                for number, raw in enumerate(handle, start=1):
                    self._take_line(path.name, number, raw, report, rejected)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        if rejected:
            self._quarantine(path.name, rejected)
        report.files += 1
        shutil.move(path, self.processed_dir / path.name)
        log.info("spool: %s ingested (%d bad lines quarantined)", path.name, len(rejected))

    def _take_line(
        self,
        source: str,
        number: int,
        raw: bytes,
        report: IngestReport,
        rejected: list[dict[str, object]],
    ) -> None:
        if not raw.strip():
            return
        try:
            if len(raw) > MAX_LINE_BYTES:
                raise ValueError(f"line is {len(raw)} bytes, more than {MAX_LINE_BYTES}")
            record = parse_record(raw, number)
        except ValueError as exc:
            excerpt = raw[:_QUARANTINE_EXCERPT_BYTES].decode("utf-8", errors="replace")
            rejected.append({"line": number, "reason": str(exc), "excerpt": excerpt})
            report.quarantined += 1
            return
        body = _canonical(record)
        digest = hashlib.sha256(body.encode()).hexdigest()
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?)",
            (digest, self._is_heldout(digest), body, source, number),
        ).rowcount
        if inserted:
            report.added += 1
        else:
            report.duplicates += 1

    def _is_heldout(self, digest: str) -> int:
        """A fixed coin per (box, record): the same record is held out on this box forever."""
        coin = hashlib.sha256(f"{self._node_id}:{digest}".encode()).digest()
        return int(int.from_bytes(coin[:8], "big") / 2**64 < self._heldout_fraction)

    def _quarantine(self, name: str, rejected: list[dict[str, object]]) -> None:
        target = self.quarantine_dir / f"{name}.rejected.jsonl"
        with target.open("a", encoding="utf-8") as handle:
            for entry in rejected:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        log.warning(
            "spool: %s: %d bad lines, first: line %s: %s",
            name,
            len(rejected),
            rejected[0]["line"],
            rejected[0]["reason"],
        )

    def records(self, heldout: bool) -> list[Record]:
        """Training (heldout=False) or held-out records, in arrival order."""
        rows = self._db.execute(
            "SELECT body, line FROM records WHERE heldout = ? ORDER BY rowid", (int(heldout),)
        )
        return [parse_record(body.encode(), line) for body, line in rows]

    def counts(self) -> tuple[int, int]:
        """(training, held-out) record counts."""
        rows = dict(self._db.execute("SELECT heldout, COUNT(*) FROM records GROUP BY heldout"))
        return rows.get(0, 0), rows.get(1, 0)


def _canonical(record: Record) -> str:
    if record.text is not None:
        return json.dumps({"text": record.text}, ensure_ascii=False)
    return json.dumps(
        {"prompt": record.prompt, "completion": record.completion}, ensure_ascii=False
    )
