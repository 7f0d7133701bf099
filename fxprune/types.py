"""Plain-data records of the public API: channel groups, plans, reports, results."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from fxprune.errors import PlanFileError

PLAN_FORMAT = 2  # 2: a search's record in `search` (format 1 kept it in method_options, under prefixed keys)

# Where plans of format 1 kept a search's record: {key in method_options: key in PruningPlan.search}.
LEGACY_SEARCH_KEYS: dict[str, str] = {
    **{f"tas_{k}": k for k in ("searched_fractions", "searched_depths", "log", "search_s")},
    **{f"dcp_{k}": k for k in ("points", "search_s")},
    **{f"jst_{k}": k for k in ("searched_fractions", "thresholds", "log", "coarse_loss", "best_accuracy",
                               "candidates_scored", "cost_ratio", "search_s")},
    **{f"metapruning_{k}": k for k in ("searched_fractions", "log", "train_loss", "best_accuracy", "cost_ratio",
                                       "search_s")},
}


@dataclass(frozen=True)
class ChannelSlot:
    """One tensor dimension that carries a group's channels: a node output or a parameter, along `dim`."""

    kind: str  # "node" | "param"
    name: str  # node name or parameter qualname
    dim: int
    role: str = "pass"  # "producer" | "consumer" | "pass"

    def __str__(self) -> str:
        return f"{self.name}[dim {self.dim}]" + (f" ({self.role})" if self.role != "pass" else "")


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together, with the graph places that carry them."""

    id: int
    size: int
    members: list[ChannelSlot]
    frozen: dict[int, str] = field(default_factory=dict)  # channel index -> why it is always kept
    origin: str = ""
    kind: str = "channels"  # "blocks": the group counts conv groups / norm groups / attention heads

    @property
    def prunable(self) -> bool:
        return self.size - len(self.frozen) > 0 and self.size > 1

    @property
    def producers(self) -> list[ChannelSlot]:
        return [m for m in self.members if m.role == "producer"]

    @property
    def consumers(self) -> list[ChannelSlot]:
        return [m for m in self.members if m.role == "consumer"]

    def __str__(self) -> str:
        frozen = f", {len(self.frozen)} frozen ({next(iter(self.frozen.values()))})" if self.frozen else ""
        unit = "channels" if self.kind == "channels" else "blocks"
        head = f"ChannelGroup #{self.id}: {self.size} {unit} from {self.origin}{frozen}"
        prod = ", ".join(str(m.name) for m in self.producers[:6])
        cons = ", ".join(str(m.name) for m in self.consumers[:6])
        return f"{head}\n  producers: {prod or '-'}\n  consumers: {cons or '-'}\n  members: {len(self.members)}"

    __repr__ = __str__


@dataclass
class GroupDecision:
    """Which channels of one group a plan keeps (indices into the group's channel order)."""

    id: int
    size: int
    keep: list[int]


@dataclass
class PruningPlan:
    """What to keep, as data: JSON round-trips, can be reviewed, saved and re-applied.

    `method_options` are the options the method was given (the JSON-able ones); `search` is what a searching
    method recorded (`SearchResult.record()`: searched widths, curves, `search_s` seconds, ...). A plan saved
    before `search` existed loads with its search record moved out of `method_options` (LEGACY_SEARCH_KEYS).

    >>> plan = PruningPlan(groups=[GroupDecision(0, 4, [0, 2])], graph_signature="abc")
    >>> PruningPlan.from_json(plan.to_json()) == plan
    True
    >>> old = PruningPlan.from_dict({"groups": [], "graph_signature": "abc", "method": "tas", "format": 1,
    ...                              "method_options": {"tas_epochs": 2, "tas_log": [[1, 0.9]]}})
    >>> old.method_options, old.search
    ({'tas_epochs': 2}, {'log': [[1, 0.9]]})
    """

    groups: list[GroupDecision]
    graph_signature: str
    method: str = "l1"
    method_options: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    round_to: int = 1
    strict: bool = True
    scope: str = "global"  # how a FLOPs / params budget was spread: "global" or "local"
    steps: int = 1  # prune rounds (iterative pruning)
    achieved: dict[str, float] = field(default_factory=dict)
    skipped_blocks: list[list[str]] = field(default_factory=list)  # residual blocks removed: [add, shortcut]
    search: dict[str, Any] = field(default_factory=dict)  # a searching method's record (log and timings)
    library_version: str = ""
    format: int = PLAN_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        """A plan from its dict form (the JSON's); a dict that is not one raises PlanFileError naming why."""
        if not isinstance(data, dict):
            raise PlanFileError(f"a plan is a JSON object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(data) - known), [k for k in ("groups", "graph_signature") if k not in data]
        if unknown or missing:
            raise PlanFileError(
                f"not a PruningPlan: {'unknown fields ' + ', '.join(unknown) if unknown else ''}"
                f"{'; ' if unknown and missing else ''}{'missing ' + ', '.join(missing) if missing else ''} "
                f"(a plan has {', '.join(sorted(known))}). Write plans with PruningPlan.save / fxprune prune --out.")
        data = dict(data)
        try:
            data["groups"] = [GroupDecision(**g) for g in data.get("groups", [])]
        except TypeError as e:
            raise PlanFileError(f"not a PruningPlan: a group must have id, size and keep ({e}).") from None
        if "search" not in data:  # format 1: the search's record is in method_options
            options = dict(data.get("method_options") or {})
            data["search"] = {LEGACY_SEARCH_KEYS[k]: options.pop(k) for k in list(options) if k in LEGACY_SEARCH_KEYS}
            data["method_options"] = options
            data["format"] = PLAN_FORMAT
        return cls(**data)

    def to_json(self) -> str:
        """Pretty JSON with one line per group, so plans stay readable and diff well."""
        data = self.to_dict()
        groups = data.pop("groups")
        head = json.dumps(data, indent=1, sort_keys=True)[:-2]
        lines = ",\n  ".join(json.dumps(g, sort_keys=True) for g in groups)
        return f'{head},\n "groups": [\n  {lines}\n ]\n}}\n'.replace("{,", "{")

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanFileError(f"not a plan: invalid JSON at line {e.lineno}, column {e.colno} ({e.msg}).") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        """The plan saved at `path`; PlanFileError naming the file when it holds no plan."""
        try:
            return cls.from_json(Path(path).read_text())
        except PlanFileError as e:
            raise PlanFileError(f"{path}: {e}") from None
        except UnicodeDecodeError:
            raise PlanFileError(f"{path}: not a plan: the file is not text (plans are JSON).") from None

    def keep_of(self, group_id: int) -> list[int]:
        return self.groups[group_id].keep


@dataclass
class Report:
    """FLOPs and params before and after, and each group's width; printable."""

    flops_before: int
    flops_after: int
    params_before: int
    params_after: int
    widths: list[tuple[int, int, int, str]]  # (group id, size, kept, origin)
    frozen: list[tuple[int, str]] = field(default_factory=list)  # (group id, reason)
    accuracy: dict[str, float] = field(default_factory=dict)  # "dense" / "pruned" / "finetuned" -> top-1 %
    search: dict[str, Any] = field(default_factory=dict)  # {"seconds", "device", "gpu_minutes"} of the decision

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / max(self.flops_before, 1)

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flops_ratio": self.flops_ratio, "params_ratio": self.params_ratio}

    def __str__(self) -> str:
        lines = [
            f"FLOPs  {self.flops_before / 1e6:12.2f} M -> {self.flops_after / 1e6:12.2f} M  ({self.flops_ratio:.3f})",
            f"params {self.params_before / 1e6:12.3f} M -> {self.params_after / 1e6:12.3f} M  ({self.params_ratio:.3f})",
            f"{'group':>5} {'width':>12}  origin",
        ]
        for gid, size, kept, origin in self.widths:
            lines.append(f"{gid:>5} {size:>5} -> {kept:<5} {origin}")
        for gid, reason in self.frozen:
            lines.append(f"frozen group {gid}: {reason}")
        if self.accuracy:
            lines.insert(2, "accuracy " + ", ".join(f"{k} {v:.2f}%" for k, v in self.accuracy.items()))
        if self.search:
            lines.insert(2, f"search {search_text(self.search)}")
        return "\n".join(lines)


def search_text(search: dict[str, Any]) -> str:
    """'12.30 s on cuda:0 (0.205 GPU-minutes)' from a Report.search dict.

    >>> search_text({"seconds": 90.0, "device": "cuda:0", "gpu_minutes": 1.5})
    '90.00 s on cuda:0 (1.500 GPU-minutes)'
    """
    gpu = f" ({search['gpu_minutes']:.3f} GPU-minutes)" if search.get("gpu_minutes") is not None else ""
    return f"{search['seconds']:.2f} s on {search['device']}{gpu}"


@dataclass
class PruneResult:
    """What `fxprune.prune` returns: the slim module, the plan that made it, a report, and the training
    history of each fine-tune round (empty without `finetune=`)."""

    model: nn.Module
    plan: PruningPlan
    report: Report
    history: list[Any] = field(default_factory=list)

    def __iter__(self):  # allows `model, plan, report = fxprune.prune(...)`
        return iter((self.model, self.plan, self.report))


def signature_of(parts: list[str]) -> str:
    """A short stable hash of the analysed graph's structure."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
