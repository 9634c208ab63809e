"""Safe files: every output is written to a temporary file beside it and renamed into place.

A write that fails part-way (disk full, Ctrl-C, an exception in the writer)
leaves the previous file at that path intact and no partial file behind;
``os.replace`` is atomic on POSIX and Windows within one folder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "check_writable"]


def check_writable(path) -> Path:
    """Check, before any work, that ``path`` can be written; returns it as a Path.

    Raises
    ------
    ValueError
        If the folder does not exist or is not writable, or ``path`` is a folder.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: it is a folder; give a file name")
    if not parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: folder {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write {str(path)!r}: folder {str(parent)!r} is not writable")
    return path


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path, suffix: str = ""):
    """Yield a temporary path in the same folder; on success it replaces ``path``.

    Parameters
    ----------
    path : str or Path
        Final location.
    suffix : str
        Ending of the temporary file (some writers choose the format by it,
        e.g. ``".xyz"`` or ``".png"``).

    Raises
    ------
    ValueError
        From :func:`check_writable`.
    OSError
        If the write fails (disk full, file-size limit): the message names ``path``;
        the previous file there, if any, is unchanged and no temporary file is left.

    Examples
    --------
    >>> with atomic_write("model.npz", suffix=".npz") as tmp:   # doctest: +SKIP
    ...     np.savez(tmp, x=x)
    """
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".part", dir=path.parent or ".")
    os.close(fd)
    # the writer gets a name ending in ``suffix`` (a file-format hint), then we rename
    tmp_named = tmp[: -len(".part")] if suffix else tmp
    try:
        if suffix:
            os.replace(tmp, tmp_named)
        yield tmp_named
        with open(tmp_named, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would: the old
        # file's mode when replacing one, else 0666 less the umask
        os.chmod(tmp_named, _mode_for(path))
        os.replace(tmp_named, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_named)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a file-size limit, a vanished folder: name the file
            keep = "the previous file is unchanged" if path.exists() else "no file was written"
            raise OSError(f"cannot write {str(path)!r}: {exc.strerror or exc} ({keep})") from exc
        raise
