"""Atomic file writes: a temp file beside the target, then one rename; and the cleaning of temps that
killed processes left behind. Used for checkpoints (engine.io), conversions (migration) and benchmark
results (reports, bench), so that no reader, crash or full disk ever sees a half-written file.

Temp names are ``.<target name>.<pid>.<random>.tmp`` in the target's directory (same filesystem, so
os.replace is atomic). A temp whose process is gone (on this host) is stale: `remove_stale_temps`
deletes it; the writer's own failures delete theirs at once.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


def temp_path(final) -> Path:
    """A fresh temp path beside `final`."""
    final = Path(final)
    return final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def open_temp(final, mode: str = "wb"):
    """(file object, temp path): a new temp file beside `final`, created exclusively, honouring the umask."""
    tmp = temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, mode), tmp


def discard(f, tmp) -> None:
    """Close `f` (its flush may fail again on a full disk: ignored) and remove `tmp`, whatever happens."""
    try:
        if f is not None:
            f.close()
    except OSError:
        pass
    finally:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` through a temp file and one rename: the old file stays until the new one
    is complete (fsync'd); on any failure the temp file is removed and the error names `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, tmp = open_temp(path)
    try:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except OSError as e:
        discard(f, tmp)
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        discard(f, tmp)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory, name: str | None = None) -> list[Path]:
    """Delete the temps in `directory` (of target `name`, or of any target) whose writing process is
    no longer alive; returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP.match(p.name)
        if m and (name is None or m["name"] == name) and not pid_alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
