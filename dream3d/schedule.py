"""Scalar schedules: a number, or ``[start_step, start_value, end_value, end_step]`` (linear in between)."""

from __future__ import annotations

from typing import Any, Sequence


def scheduled(value: Any, step: int) -> float:
    """Value of a schedule at ``step``; constant before start_step and after end_step."""
    if value is None:
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    start_step, start_value, end_value, end_step = (float(v) for v in value)
    if step <= start_step or end_step <= start_step:
        return start_value if step <= start_step else end_value
    if step >= end_step:
        return end_value
    frac = (step - start_step) / (end_step - start_step)
    return start_value + frac * (end_value - start_value)


def is_zero(value: Any) -> bool:
    """True when a weight schedule is zero at every step (the term need not be computed)."""
    if value is None:
        return True
    if isinstance(value, (int, float)):
        return value == 0
    seq: Sequence[float] = value
    return seq[1] == 0 and seq[2] == 0
