"""What a training run reports: one `EpochRecord` per epoch, gathered in a `TrainHistory`.

>>> h = TrainHistory([EpochRecord(0, 0.1, 2.3, 10.0, 2.2, 12.5, 1.5, 800.0),
...                   EpochRecord(1, 0.0, 1.9, 30.0, 1.8, 35.0, 1.5, 810.0)])
>>> h.best_acc(), h.last_acc()
(35.0, 35.0)
>>> TrainHistory.from_dict(h.to_dict()) == h
True
>>> print(h.summary_table())
epoch        lr  train_loss  train_acc  eval_loss  eval_acc   img/s    time
    1  0.100000      2.3000      10.00     2.2000     12.50     800    1.5s
    2  0.000000      1.9000      30.00     1.8000     35.00     810    1.5s
total time 3.0s, best eval_acc 35.00
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class EpochRecord:
    """One epoch: the last lr used, train loss/accuracy (%), eval loss/accuracy (None when not evaluated),
    wall seconds (train + eval) and training images per second."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    eval_loss: float | None
    eval_acc: float | None
    seconds: float
    images_per_s: float


def _fmt(v: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


@dataclass
class TrainHistory:
    """The records of a run (resumed runs include the epochs before the interruption)."""

    records: list[EpochRecord] = field(default_factory=list)

    def best_acc(self) -> float | None:
        """The highest eval accuracy (%) of any epoch, None when nothing was evaluated."""
        accs = [r.eval_acc for r in self.records if r.eval_acc is not None]
        return max(accs) if accs else None

    def last_acc(self) -> float | None:
        """The most recent eval accuracy (%), None when nothing was evaluated."""
        accs = [r.eval_acc for r in self.records if r.eval_acc is not None]
        return accs[-1] if accs else None

    def to_dict(self) -> dict:
        """Plain dicts and numbers only (checkpoints load them with ``weights_only=True``)."""
        return {"records": [asdict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict) -> TrainHistory:
        """The inverse of `to_dict`."""
        return cls([EpochRecord(**r) for r in d.get("records", [])])

    def summary_table(self) -> str:
        """A fixed-width table, one row per epoch (1-based), then the total time and best accuracy."""
        lines = [f"{'epoch':>5} {'lr':>9} {'train_loss':>11} {'train_acc':>10} {'eval_loss':>10} "
                 f"{'eval_acc':>9} {'img/s':>7} {'time':>7}"]
        for r in self.records:
            lines.append(f"{r.epoch + 1:>5} {r.lr:>9.6f} {r.train_loss:>11.4f} {r.train_acc:>10.2f} "
                         f"{_fmt(r.eval_loss, '.4f', 10)} {_fmt(r.eval_acc, '.2f', 9)} "
                         f"{r.images_per_s:>7.0f} {r.seconds:>6.1f}s")
        total = sum(r.seconds for r in self.records)
        best = self.best_acc()
        tail = f"total time {total:.1f}s" + ("" if best is None else f", best eval_acc {best:.2f}")
        return "\n".join(lines + [tail])
