"""Atomic file writes: a temp file beside the target, then one rename; a whole directory replaced by
another in one step; and the cleaning of temps that killed processes left behind. Used for
checkpoints (engine.io), conversions (migration) and benchmark results (reports, bench), so that no
reader, crash or full disk ever sees a half-written file or a checkpoint mixed from two writes.

Temp names are ``.<target name>.<pid>.<random>.tmp`` in the target's directory (same filesystem, so
renames are atomic), for files and staging directories alike. A temp whose process is gone (on this
host) is stale: `remove_stale_temps` deletes it; the writer's own failures delete theirs at once.
"""
from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
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
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def remove(path) -> None:
    """Remove a file or a directory tree, if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def replace_dir(staging, final, keep=lambda name: True) -> None:
    """Put the complete directory `staging` at `final` as a whole. Entries of an existing `final`
    that `staging` lacks and for which keep(name) is true are carried over (hard links, else copies).
    Readers see the old directory or the new one: on Linux the two are swapped in one step; elsewhere
    the old one is renamed aside first (``.<name>.<pid>.<random>.old``) and removed after."""
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.rename(staging, final)
        return
    for entry in final.iterdir():
        if not (staging / entry.name).exists() and keep(entry.name) and not _TEMP.match(entry.name):
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, symlinks=True)
            else:
                try:
                    os.link(entry, staging / entry.name, follow_symlinks=False)
                except OSError:
                    shutil.copy2(entry, staging / entry.name, follow_symlinks=False)
    if _exchange(staging, final):
        shutil.rmtree(staging)  # now the old directory
        return
    old = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.old")
    os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old)
