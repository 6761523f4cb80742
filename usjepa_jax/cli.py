"""How the command-line tools end: a documented exit code, and a one-line message instead of a traceback.

``cli.run(main)`` replaces ``absl.app.run(main)`` in ``usjepa_jax.main`` and ``usjepa_jax.evaluate``. Exit codes:

- 0: done;
- ``EXIT_USER_ERROR`` (2): something the user gave is wrong (a config key or value, a path, a file's content);
  one line on stderr names it (``--verbose`` shows the traceback);
- ``EXIT_DIVERGED`` (3): training produced a non-finite value; nothing non-finite was saved or exported,
  rerunning the same command diverges again (lower the learning rate, or resume from an earlier checkpoint);
- ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL`` of sysexits.h): SIGTERM arrived, a checkpoint was saved; rerunning the
  same command resumes exactly. The launch scripts requeue on it;
- 1: anything else (a bug): the full traceback.

What counts as a user error: ``UserError``; a file-system error (it names the file); a ``ValueError`` raised by
this package's own code, whose convention is that a ValueError names the offending key, file or value (one
raised inside a library is a bug and keeps its traceback); a flag or config-file error.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from absl import app, flags

from usjepa_jax.errors import Diverged, Preempted, UserError
from usjepa_jax.storage import MissingBackendError

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 75

_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the full traceback of an error (by default one line).")
_PACKAGE = Path(__file__).resolve().parent
_FILE_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _raised_here(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is this package's code (or a config file)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    file = Path(tb.tb_frame.f_code.co_filename).resolve()
    return _PACKAGE in file.parents or file.parent.name == "configs"


def is_user_error(exc: BaseException) -> bool:
    from usjepa_jax.data.decoders import BadFileError  # an input file that does not read (here: only on error)

    return (isinstance(exc, (UserError, app.UsageError, MissingBackendError, BadFileError, *_FILE_ERRORS))
            or (isinstance(exc, ValueError) and _raised_here(exc)))


def one_line(message: str) -> str:
    """A multi-line message (a wrapped traceback of a config file, a listing) as one line: the first line, the
    last (the exception itself, for a wrapped traceback) and nothing in between; a listing is joined by ``; ``."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    if not lines:
        return str(message)
    if any(line.startswith("Traceback (most recent call last)") for line in lines):
        head = lines[0].replace("Error whilst parsing config file:", "").strip()
        return f"{head} {lines[-1]}".strip()
    return "; ".join(lines)


def _config_key_error(exc: BaseException, argv: list[str]) -> str:
    """ml_collections' error for an override of a missing key (a KeyError inside an AttributeError, with a
    'Did you mean' hint when a key is close) as one line naming the flag."""
    root = exc
    while root.__context__ is not None:
        root = root.__context__
    key = str(root.args[0]) if root.args else str(root)
    hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(exc).replace("\\", ""))
    if hint:
        key = hint.group(2)
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.") and f".{key}." in a.split("=")[0] + "."),
                "--config")
    return f"{flag}: the config has no key {key!r}" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def _verbose(argv: list[str]) -> bool:
    """``--verbose``, also before the flags are parsed (an error in parsing them) or when they never are (tests)."""
    return _VERBOSE.value if flags.FLAGS.is_parsed() else any(a in ("--verbose", "--verbose=true") for a in argv)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, its errors (and ml_collections' config-file and override errors, some of which
    escape absl's own handler as tracebacks) as one line and ``EXIT_USER_ERROR``."""
    try:
        rest = flags.FLAGS(argv)
        for name in ("config",):  # a config file that failed to load only says so when first read
            if name in flags.FLAGS and flags.FLAGS[name].value is not None:
                getattr(flags.FLAGS[name].value, "keys")
        return rest
    except Exception as e:  # noqa: BLE001 - every parse error is the user's flag
        if _verbose(argv):
            traceback.print_exc()
        if isinstance(e, (KeyError, AttributeError)):
            _fail(_config_key_error(e, argv), EXIT_USER_ERROR)
        if isinstance(e, OSError):  # ml_collections: the config file could not be loaded
            config_flag = next((a for a in argv if a.startswith("--config=")), "--config")
            _fail(f"{config_flag}: {one_line(str(e)).split('; ')[-1]}", EXIT_USER_ERROR)
        _fail(one_line(str(e)), EXIT_USER_ERROR)


def guard(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """``main`` with its errors turned into the exit codes of the module docstring."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except Preempted as e:
            _fail(str(e), EXIT_PREEMPTED)
        except Diverged as e:
            if _verbose(argv):
                traceback.print_exc()
            _fail(one_line(str(e)), EXIT_DIVERGED)
        except Exception as e:  # noqa: BLE001 - sorted into the user's and ours
            if not is_user_error(e):
                raise
            if _verbose(argv):
                traceback.print_exc()
            _fail(f"{one_line(str(e))} (--verbose shows the traceback)", EXIT_USER_ERROR)

    return guarded


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run(main)`` with one-line errors and the exit codes of the module docstring."""
    app.run(guard(main), flags_parser=parse_flags)
