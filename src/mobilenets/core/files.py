"""Files written atomically: a temporary file in the same folder, then a rename.

An interrupted write leaves the previous file, never a partial one under the final name. Every file
the library writes (weights, run state, metrics, exports) goes through
[`atomic_path`][mobilenets.core.files.atomic_path].
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``. An
    interrupted write leaves the previous file, never a partial one under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_json(path: str | os.PathLike, value) -> None:
    """Write ``value`` as indented JSON, atomically."""
    with atomic_path(path) as temporary:
        Path(temporary).write_text(json.dumps(value, indent=2) + "\n")
