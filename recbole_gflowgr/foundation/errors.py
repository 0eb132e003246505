"""User-facing errors: one line naming the file or config key and the fix.

Every command (``run_recbole_gflowgr.py``, ``python -m recbole_gflowgr.<tool>``: :func:`cli`) prints
``error: <message>`` for these and exits with status 2, without a stack trace. Everything else is a bug and keeps
its traceback.
"""
import functools
import sys


class GFlowGRError(Exception):
    """Base class of errors caused by input (data, config, command line), not by a bug."""


class DatasetError(GFlowGRError):
    """A dataset source is missing or malformed."""


class ConfigError(GFlowGRError):
    """A config key has an impossible or unknown value."""


class TrainingError(GFlowGRError):
    """Training diverged (a non-finite loss or log Z): the run stops, its last good checkpoints are kept."""


def cli(main):
    """Decorator of a command's ``main(argv=None)``: bad input (a :class:`GFlowGRError`) ends it with one line
    ``error: <message>`` on stderr and returns 2 (run it as ``sys.exit(main())``); a bug keeps its traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except GFlowGRError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run
