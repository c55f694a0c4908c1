"""Summaries of repeated measurements: medians, ranges, and same-round ratios.

A point is measured in rounds: in each round every loop runs once, back to back (A B C A B C ...).
Machine noise drifts over seconds, so a ratio is formed *within* a round (loop X's figure divided
by the reference loop's figure from the same round) and the median of those per-round ratios is
reported -- not the ratio of two medians taken at different moments.
"""

from __future__ import annotations

import statistics
from typing import Optional, Sequence


def summarize(values: Sequence[Optional[float]]) -> Optional[dict]:
    """{"median", "min", "max", "n"} of the values that exist, or None when none does."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present),
            "n": len(present)}


def round_ratios(values: Sequence[Optional[float]],
                 reference: Sequence[Optional[float]]) -> list[Optional[float]]:
    """values[r] / reference[r] for every round r where both were measured (else None)."""
    out: list[Optional[float]] = []
    for value, ref in zip(values, reference):
        if value is None or ref is None or ref == 0:
            out.append(None)
        else:
            out.append(value / ref)
    return out


def summarize_point(runs_by_loop: dict, metric: str, references: Sequence[str]) -> dict:
    """Per loop: the metric's summary over rounds and its same-round ratios to each reference.

    runs_by_loop maps loop -> list (one entry per round) of run dicts or None (not run / failed).
    """
    series = {loop: [run.get(metric) if run else None for run in runs]
              for loop, runs in runs_by_loop.items()}
    out = {}
    for loop, values in series.items():
        entry = {"summary": summarize(values), "ratios": {}}
        for ref in references:
            if ref == loop or ref not in series:
                continue
            entry["ratios"][ref] = summarize(round_ratios(values, series[ref]))
        out[loop] = entry
    return out
