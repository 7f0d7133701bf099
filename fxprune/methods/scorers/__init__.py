"""Scoring methods: a number per channel, higher = keep; `fxprune.selection` turns the scores into a decision."""
from fxprune.methods.scorers import fpgm, magnitude, slimming, taylor, uniform  # noqa: F401  (register the scorers)
