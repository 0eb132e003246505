"""Every RecBole 1.2.1 / numpy / pandas / torch incompatibility, handled once, here.

Imported first by ``recbole_gflowgr/__init__.py`` so that nothing else needs to care:

* numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` (used by ``Config.compatibility_settings``) and
  ``np.float``/``np.bool``/``np.int`` (used by RecBole's dataset and metrics code, also after a checkpoint is
  unpickled, where ``compatibility_settings`` never runs). :func:`numpy_aliases` restores them as the builtin
  numpy types they always meant. Works with numpy 1.x (pinned on CPU) and 2.x (the GPU machine).
* pandas 3 makes ``fillna(inplace=True)`` on a column a no-op and changes ``Series.agg(len)``; both are inside
  ``recbole.data.dataset``. We do not patch RecBole's dataset code: pandas < 3 is required and checked here.
* torch >= 2.6 loads with ``weights_only=True`` by default; RecBole's checkpoints pickle its ``Config``.
  :func:`trusted_checkpoints` scopes ``weights_only=False`` to loads of checkpoints this process wrote itself.
* ``recbole.model.sequential_recommender`` switches on autograd anomaly detection globally (SINE):
  :func:`no_anomaly_detection` switches it off.
* ``recbole.quick_start`` imports ray at import time: this package never imports it (see ``quick_start.py``).
* ``Config`` reads ``--key=value`` from ``sys.argv``: :func:`argv` pins what it sees (see ``config.py``).
* ``Collector.get_data_struct`` calls ``.cpu()`` on every collected value, but ItemCoverage / AveragePopularity /
  TailPercentage make it collect an int and a Counter: :func:`collector_non_tensors` moves only tensors.
"""
import contextlib
import sys

import numpy as np

_NUMPY_ALIASES = {
    "float_": np.float64, "complex_": np.complex128, "unicode_": np.str_,  # numpy 2 removals
    "bool": bool, "int": int, "float": float, "complex": complex, "object": object, "str": str,  # numpy 1.24
    "long": int,
}


def numpy_aliases():
    """Restore the numpy names RecBole 1.2.1 uses; idempotent, never overrides an existing attribute."""
    for name, value in _NUMPY_ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)


def check_pandas():
    import pandas as pd

    if int(pd.__version__.split(".")[0]) >= 3:
        raise ImportError(
            f"recbole_gflowgr: pandas {pd.__version__} is installed, but RecBole 1.2.1's dataset code relies on "
            "pandas<3 (fillna(inplace=True) on a column is a no-op in pandas 3). Fix: pip install 'pandas<3'."
        )


def trusted_torch_load(path, map_location="cpu"):
    """Load a checkpoint written by this package or by RecBole's Trainer (it pickles Config, numpy scalars)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=False)


@contextlib.contextmanager
def trusted_checkpoints():
    """Within the block, ``torch.load`` defaults to ``weights_only=False``.

    RecBole's ``Trainer.resume_checkpoint`` and ``Trainer.evaluate`` call ``torch.load(file)`` on checkpoints that
    the trainer itself saved under ``checkpoint_dir``; only those calls are wrapped (see ``trainer.py``).
    """
    import torch

    original = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return original(*args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


@contextlib.contextmanager
def argv(args):
    """RecBole's ``Config`` parses ``sys.argv``; show it ``args`` (a list of ``--key=value``) instead."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "recbole_gflowgr"] + list(args or [])
    try:
        yield
    finally:
        sys.argv = saved


def quiet_known_warnings():
    """RecBole 1.2.1 under pandas 2.x warns on every column it fills (the pandas 3 behaviour we exclude above) and
    builds a deprecated ``torch.cuda.amp.GradScaler``; both are known and harmless here."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")
    warnings.filterwarnings("ignore", message=r".*GradScaler.*is deprecated", category=FutureWarning)


numpy_aliases()
check_pandas()
quiet_known_warnings()


def no_anomaly_detection():
    """``recbole/model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` at import
    time, and importing any RecBole sequential model imports it: every backward op is then followed by a NaN scan
    (``aten::ne`` + ``aten::any`` on every gradient), which made RecBole's SASRec ~3x slower on CPU. Import it once,
    here, and switch the global back off."""
    import torch
    import recbole.model.sequential_recommender.sine  # noqa: F401

    torch.autograd.set_detect_anomaly(False)


no_anomaly_detection()


def collector_non_tensors():
    """RecBole 1.2.1's evaluator crashes (``'int' object has no attribute 'cpu'``) on its own non-accuracy metrics
    (``data.num_items`` is an int, ``data.count_items`` a Counter): move only tensors to the CPU before the
    original method runs."""
    import torch
    from recbole.evaluator.collector import Collector

    original = Collector.get_data_struct
    if getattr(original, "_gflowgr", False):
        return

    def get_data_struct(self):
        data = self.data_struct._data_dict
        kept = {k: v for k, v in data.items() if not isinstance(v, torch.Tensor)}
        for key in kept:
            del data[key]
        try:
            returned = original(self)
        finally:
            data.update(kept)
        returned._data_dict.update(kept)
        return returned

    get_data_struct._gflowgr = True
    Collector.get_data_struct = get_data_struct


collector_non_tensors()
