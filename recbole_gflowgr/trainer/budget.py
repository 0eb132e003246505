"""``time_budget_s``: a wall-clock budget inside one run, so that a run on a machine lent for minutes stops early
enough to evaluate its best checkpoint on test and write its row.

The budget counts wall seconds from the start of the run's own work (``quick_start.run``: after the SFT checkpoint
of a fine-tuning run is there, so that data loading, model building and the collaborative model count; default:
the trainer's construction). It is checked after each validation (the only point where stopping leaves a best
checkpoint that reflects every epoch trained): training stops there when the next validation interval (the epochs up
to the next validation at the mean epoch time, plus one validation) and the test evaluation (one more validation's
time) would end past the budget. The first epoch always runs (nothing is measured before it), early stopping and
the ``epochs`` cap take precedence when they end the run at the same validation, and ``0`` turns it off.
Fine-tuning runs read ``finetune_time_budget_s`` instead (``quick_start.as_finetuning``), like ``finetune_epochs``.

The row says what ended training in ``stopped_by``: ``"early_stopping"``, ``"epochs"`` (the cap) or
``"time_budget"``; ``stopped_early`` stays what it was (early stopping only).
"""
import time

clock = time.perf_counter  # the one clock of epoch times, validation times and the budget (tests replace it)

EARLY_STOPPING, EPOCHS, TIME_BUDGET = "early_stopping", "epochs", "time_budget"


class BudgetSpent(Exception):
    """Raised after a validation by the fit loop's callback when the next interval would overrun the budget; caught
    by ``TrainerMixin.fit``, which ends training there as RecBole's early stopping would."""


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def overruns(elapsed_s, epoch_s, valid_s, epochs_to_next_validation, budget_s):
    """Whether ``epochs_to_next_validation`` more epochs of ``epoch_s`` seconds, their validation (``valid_s``) and
    the test evaluation (``valid_s`` again: leave-one-out valid and test sets have one target per user) would end
    after ``budget_s`` seconds, ``elapsed_s`` of them spent. ``budget_s`` 0 or None: never."""
    if not budget_s:
        return False
    return elapsed_s + epochs_to_next_validation * epoch_s + 2 * valid_s > budget_s


def stop_reason(budget_ended, stopped_early):
    """The row's ``stopped_by``."""
    return TIME_BUDGET if budget_ended else EARLY_STOPPING if stopped_early else EPOCHS
