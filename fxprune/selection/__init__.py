"""Stage 4, select: scores and a budget -> which channels of each group to keep (a `Keep`)."""
from fxprune.selection.select import Budget, repair, select

__all__ = ["Budget", "repair", "select"]
