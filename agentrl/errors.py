"""The one place that turns an expected failure into the one-line message ``agentrl`` prints (exit 2).

Expected failures are a bad config or option (``ValueError``: its message starts with the field it
names) and the operating system refusing a write or a read (``OSError``: a read-only directory, a path
under a file, a full disk). Anything else is a bug and keeps its traceback. No torch here.
"""

from __future__ import annotations

import errno

EXPECTED = (ValueError, OSError)

_HINTS = {
    errno.ENOSPC: "no space left on the device; checkpoints are written aside and renamed, so the last "
                  "complete one is intact: free some space and continue with --resume",
    errno.EDQUOT: "disk quota exceeded; the last complete checkpoint is intact: continue with --resume",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory, not a file",
}


def one_line(err: BaseException) -> str:
    """The message of an expected failure, on one line."""
    if isinstance(err, OSError):
        where = err.filename if err.filename is not None else ""
        hint = _HINTS.get(err.errno or -1) or (err.strerror or type(err).__name__)
        return f"{where}: {hint}" if where else hint
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
