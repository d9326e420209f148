"""Files a daemon writes for itself: replaced whole or not at all, and set aside when bad.

Both daemons keep state in plain files (the box's edge-state.json and adapters, the
aggregator's global adapters). A write goes through a fsynced temporary file and a rename,
so a power cut leaves the old file or the new one; a file that cannot be used is renamed
`<name>.corrupt-<time>` (kept for a post-mortem) rather than raised on at every start.
"""

import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)


def quarantine(path: Path, exc: Exception) -> Path:
    """Set a bad file of the daemon's own aside (kept for a post-mortem); where it went."""
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    path.replace(aside)
    log.error("%s cannot be used (%s); moved aside to %s", path, exc, aside.name)
    return aside


def write_durably(path: Path, data: bytes) -> Path:
    """Write via a fsynced temporary file and a rename: the old file or the new, whole."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    _sync_folder(path.parent)
    return path


def copy_durably(source: Path, target: Path) -> Path:
    """Copy `source` to `target` the same way (the source stays: it is the hand-over)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(target)
    _sync_folder(target.parent)
    return target


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
