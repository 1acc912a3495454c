"""Pass / review / fail from a defect score: the one rule of evaluation and the line side (no dependencies).

    >>> verdict(0.93, threshold=0.5, band=0.1)
    'fail'
"""
from __future__ import annotations

VERDICTS = ("pass", "review", "fail")


def verdict(score: float, threshold: float, band: float) -> str:
    """fail above the threshold's review band, pass below it, review inside it (never a silent pass).

    The band reaches at most half-way to 0 and to 1: with a threshold of 0.95 and a band of 0.1 a sure
    defect (score 1.0) would otherwise never fail, only wait for review.
    """
    if score >= threshold + min(band, (1 - threshold) / 2):
        return "fail"
    if score >= threshold - min(band, threshold / 2):
        return "review"
    return "pass"
