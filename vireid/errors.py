"""Expected errors read as one line: ``error: <file or key>: <what> (<hint>)``, exit code 2.

Every entry point (the ``vireid`` command, the DVC stage scripts in ``pipelines/``) runs its
work through :func:`run_entry`: an *expected* error (bad input: a parameters file, a dataset
tree, a checkpoint, a model URI, a path given on the command line) prints one line on stderr
and returns exit code 2; anything else is a bug and keeps its traceback (exit code 1). With
``--debug`` on the command line or ``VIREID_DEBUG=1`` in the environment, expected errors
keep their traceback too.

Errors raised inside Ray Train workers reach the driver wrapped (``WorkerGroupError``,
``RayTaskError``): :func:`expected_error` looks through the wrappers for the cause.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

EXIT_EXPECTED = 2
EXIT_INTERRUPTED = 130
DEBUG_ENV = "VIREID_DEBUG"

# (module, class name, hint appended when the message has none)
_EXPECTED: tuple[tuple[str, str, str], ...] = (
    ("vireid.config", "ConfigError", "fix the key in the parameters file"),
    ("vireid.data.errors", "DatasetError", "fix or replace the file in the dataset tree"),
    ("vireid.training.checkpoint", "CheckpointError", "point at the model.pt the train stage wrote for these parameters"),
    ("vireid.evaluation.regdb", "TrialMismatchError", "evaluate on the trial the model was trained on"),
    ("vireid.evaluation.provenance", "ShardMismatchError", "evaluate with the shards the model was trained on"),
    ("vireid.evaluation.sysu", "GallerySamplingError", "check eval.official_perm_path and the dataset"),
    ("vireid.modeling.backbone", "PretrainedWeightsError", "see model.weights_path"),
    ("vireid.tracking.store", "TrackingError", "check track.* and the MLflow store"),
    ("vireid.retrieval", "SearchError", "check the paths given"),
    ("vireid.tuning.run", "SearchIncomplete", "finished trials are kept"),
    ("vireid.ray_session", "RayStartError", "rerun; see Ray's logs in /tmp/ray/session_latest/logs"),
    ("yaml", "YAMLError", "fix the YAML syntax"),
)
# OSErrors about a path the user handed in (missing file, folder where a file was expected...)
_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
# OSErrors of an output location the user chose that cannot take the outputs
_UNWRITABLE = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT})


def debug_requested(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> bool:
    """``--debug`` in ``argv`` or ``VIREID_DEBUG`` set to something other than ``0``/empty."""
    env = os.environ if environ is None else environ
    return "--debug" in argv or env.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _expected_types() -> list[tuple[type[BaseException], str]]:
    """The expected classes among the modules already imported (a class whose module was
    never imported cannot have been raised; importing them all would cost seconds)."""
    out = []
    for module, name, hint in _EXPECTED:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type):
            out.append((cls, hint))
    return out


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` then what it wraps: Ray's ``cause``/``worker_failures``/``controller_failure``,
    then ``__cause__`` (breadth first, each once)."""
    seen: set[int] = set()
    queue = [exc]
    while queue:
        e = queue.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        wrapped: list[Any] = [getattr(e, "cause", None), getattr(e, "controller_failure", None)]
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, Mapping):
            wrapped.extend(failures[k] for k in sorted(failures))
        wrapped.append(e.__cause__)
        queue.extend(w for w in wrapped if isinstance(w, BaseException))


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def expected_error(exc: BaseException) -> str | None:
    """The one-line message (without ``error:``) when ``exc`` (or what it wraps) is an
    expected error, else None (a bug: keep the traceback)."""
    types = _expected_types()
    for e in _causes(exc):
        if type(e).__name__.startswith("RayTaskError") and getattr(e, "cause", None) is not None:
            continue  # its message is a remote traceback: report the cause instead
        for cls, hint in types:
            if isinstance(e, cls):
                return _with_hint(_yaml_message(e) if cls.__name__ == "YAMLError" else str(e), hint)
        if isinstance(e, _OS_ERRORS) and e.filename is not None:
            what = e.strerror or type(e).__name__
            return f"{e.filename}: {what} (check the path given)"
        if isinstance(e, OSError) and e.errno in _UNWRITABLE and e.filename is not None:
            what = e.strerror or type(e).__name__
            return f"{e.filename}: {what} (write the outputs somewhere writable: another --out or data.root)"
    return None


def _yaml_message(e: BaseException) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "YAML"
    return f"{where}: {problem}"


def _with_hint(message: str, hint: str) -> str:
    message = _one_line(message) or "(no message)"
    return message if message.endswith(")") else f"{message} ({hint})"


def error_line(exc: BaseException) -> str | None:
    """``error: <file or key>: <what> (<hint>)`` for an expected error, else None."""
    message = expected_error(exc)
    return None if message is None else f"error: {message}"


def run_entry(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *,
              debug: bool = False, environ: Mapping[str, str] | None = None) -> int:
    """Run ``main(argv)``: exit code 0; an expected error -> one line on stderr and 2 (the
    traceback with ``--debug`` / ``VIREID_DEBUG=1``); Ctrl-C -> one line and 130; any other
    exception propagates (a bug: Python prints the traceback, exit code 1); a KeyboardInterrupt
with a message (the train stage's: where a rerun resumes) prints it in parentheses. ``main``'s
    return value is ignored (the CLI keeps its own)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug or debug_requested(argv, environ)
    try:
        main(argv)
    except KeyboardInterrupt as e:
        if debug:
            raise
        why = _one_line(e.args[0]) if e.args and isinstance(e.args[0], str) else ""
        print(f"error: interrupted ({why})" if why else "error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        line = error_line(e)
        if line is None or debug:
            raise
        print(line, file=sys.stderr)
        return EXIT_EXPECTED
    return 0
