"""User-facing errors: one line naming the file or config key and the fix.

The CLI (``run_recbole_gflowgr.py``) prints ``error: <message>`` for these and exits with status 2, without a
stack trace. Everything else is a bug and keeps its traceback.
"""


class GFlowGRError(Exception):
    """Base class of errors caused by input (data, config, command line), not by a bug."""


class DatasetError(GFlowGRError):
    """A dataset source is missing or malformed."""


class ConfigError(GFlowGRError):
    """A config key has an impossible or unknown value."""


class TrainingError(GFlowGRError):
    """Training diverged (a non-finite loss or log Z): the run stops, its last good checkpoints are kept."""
