"""Where files live: local paths or buckets (``gs://BUCKET/...``), all through ``etils.epath`` (as orbax's own).

Every module turns a path or URI into a path object with ``storage.path(p)``: an ``epath.Path``, which is a
``pathlib``-like object for local paths and for ``gs://`` (and ``s3://``...) URIs alike. A plain
``pathlib.Path('gs://b/run')`` would be the local folder ``./gs:/b/run``; so would ``open()``,
``os.makedirs`` or ``savefig`` on the URI string: they take files through ``path.open()`` instead.

epath reaches a bucket through fsspec (``gcsfs`` for ``gs://``, the ``[gcs]`` extra) or through TensorFlow's
``tf.io.gfile`` when TensorFlow is installed. Without either, ``check_backend`` fails at start, naming what to
install, before anything is written; the CLIs call it on every path of the config.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable

from etils import epath

from usjepa_jax.errors import UserError

# URI prefix -> (fsspec protocol, what to pip install for it)
BACKENDS = {
    "gs://": ("gs", "'usjepa_jax[gcs]' (gcsfs)"),
    "s3://": ("s3", "s3fs"),
    "az://": ("az", "adlfs"),
}


class MissingBackendError(ImportError):
    """A bucket path whose filesystem backend is not installed."""


def is_remote(p: str | os.PathLike) -> bool:
    return os.fspath(p).startswith(tuple(BACKENDS))


def check_backend(p: str | os.PathLike) -> None:
    """Raise ``MissingBackendError`` when ``p`` is a bucket URI that epath cannot reach in this environment."""
    text = os.fspath(p)
    for prefix, (protocol, install) in BACKENDS.items():
        if not text.startswith(prefix) or importlib.util.find_spec("tensorflow") is not None:
            continue
        import fsspec

        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as err:
            raise MissingBackendError(
                f"{text}: {prefix} paths need a filesystem backend for etils.epath, and none is installed "
                f"({err}). Install it with: pip install {install}. Nothing was written.") from err


def check_backends(paths: Iterable[str | os.PathLike]) -> None:
    """``check_backend`` on each non-empty path: the CLIs' start-up check of a config's paths."""
    for p in paths:
        if p:
            check_backend(p)


def require_local(p: str | os.PathLike, what: str) -> None:
    """ArrayRecord shards (prepared data, teacher target caches) are read and written by array_record's own
    file layer, which opens local files only: a bucket path there fails here, saying what to do instead."""
    if p and is_remote(p):
        raise ValueError(f"{what}={os.fspath(p)!r}: ArrayRecord shards are read from local disk only. Copy them "
                         f"to a local (or gcsfuse-mounted) folder first, e.g. gcloud storage cp -r "
                         f"{os.fspath(p)} /data/, and pass that path.")


def check_workdir(workdir: str) -> None:
    """A workdir that cannot become a run folder fails here, naming it, before anything is built or written."""
    if not workdir.strip():
        raise UserError("--workdir is empty: pass the run's directory (created when missing).")
    if is_remote(workdir):
        return  # a bucket: check_backends checks what can be checked without writing
    local = os.path.abspath(os.path.expanduser(workdir))
    existing = local
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"--workdir={workdir}: {existing} is a file, not a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--workdir={workdir}: {existing} is not writable.")


def path(p: str | os.PathLike) -> epath.Path:
    """The path object for a local path or a bucket URI (checked: a missing backend fails here, clearly)."""
    check_backend(p)
    return epath.Path(p)


def absolute(p: str | os.PathLike) -> epath.Path:
    """An absolute path object (``Path.absolute()`` for local paths; a bucket URI already is one: resolving it
    as a local path would make ``./gs:/...``)."""
    return path(p) if is_remote(p) else epath.Path(os.path.abspath(os.fspath(p)))


def save_figure(fig, p: str | os.PathLike, **kwargs) -> None:
    """``fig.savefig`` to a local path or a bucket (matplotlib itself only opens local files)."""
    p = path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("wb") as f:
        fig.savefig(f, format=p.suffix.lstrip(".") or "png", **kwargs)


class LineLog:
    """A log file that lines are appended to (``metrics.jsonl``), each line written through at once.

    A local file is appended to and flushed. A bucket object cannot be appended to, so it is rewritten whole at
    each line (what was there before included: a resumed run continues the file); logs are small.
    """

    def __init__(self, p: str | os.PathLike):
        self.path = path(p)
        self._lines: list[str] | None = None
        self._file = None
        if is_remote(self.path):
            self._lines = [self.path.read_text()] if self.path.exists() else []
        else:
            self._file = self.path.open("a")

    def write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        else:
            self._lines.append(line)
            self.path.write_text("".join(self._lines))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
