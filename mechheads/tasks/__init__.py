"""Tasks: prompts, targets and loss masks; metrics; seeded generators of the built-in tasks."""

from mechheads.tasks.core import Task, TokenBatch
from mechheads.tasks.generators import (
    FUNCTION_TASK_NAMES,
    FV_TASK_NAMES,
    aba_abb_task,
    aba_var_task,
    function_task,
    function_task_pair,
    fv_task,
    induction_pair,
    induction_task,
    ioi_pair,
    ioi_task,
)
from mechheads.tasks.metrics import METRICS, accuracy, get_metric, logit_diff, mse, target_logprob, target_nll

__all__ = [
    "FUNCTION_TASK_NAMES",
    "FV_TASK_NAMES",
    "METRICS",
    "Task",
    "TokenBatch",
    "aba_abb_task",
    "aba_var_task",
    "accuracy",
    "function_task",
    "function_task_pair",
    "fv_task",
    "get_metric",
    "induction_pair",
    "induction_task",
    "ioi_pair",
    "ioi_task",
    "logit_diff",
    "mse",
    "target_logprob",
    "target_nll",
]
