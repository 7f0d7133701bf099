"""Evolutionary architecture search over per-group width choices (MetaPruning's search, reusable).

A candidate is a tuple of gene values, one per searched group (an index into that group's width choices).
Each iteration keeps the `parents` best candidates, then makes `mutations` children (every gene re-drawn
with probability `mutate_p`) and `crossovers` children (each gene from one of two parents), rejecting any
child outside the budget window or already seen; the first population is random candidates inside the
window. `fitness` (higher is better) is called once per distinct candidate. With a `checkpoint`
(fxprune.methods.search.checkpoint.SearchCheckpoint) the search is saved after every iteration and a saved one
continues with the same random draws, so it ends where an uninterrupted search ends.

>>> cfg = EvolutionConfig(population=8, parents=3, mutations=4, crossovers=4, iterations=3, seed=0)
>>> best, score, log = evolve([5, 5, 5], lambda c: True, lambda c: float(sum(c)), cfg)
>>> score == sum(best) and len(log) == 3
True
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tqdm.auto import tqdm

from fxprune.methods.search.checkpoint import SearchCheckpoint

__all__ = ["EvolutionConfig", "evolve"]

Candidate = tuple[int, ...]


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 50
    parents: int = 10
    mutations: int = 25
    crossovers: int = 25
    mutate_p: float = 0.1
    iterations: int = 20
    max_tries: int = 2000  # draws per needed child before giving up on filling a batch
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.population < 1 or not 1 <= self.parents <= self.population or self.iterations < 1:
            raise ValueError(f"evolution settings population={self.population}, parents={self.parents}, "
                             f"iterations={self.iterations}: need population >= parents >= 1 and iterations >= 1.")


def _draw(fits: Callable[[Candidate], bool], seen: set, make: Callable[[], Candidate], n: int,
          tries: int) -> list[Candidate]:
    out = []
    for _ in range(n * tries):
        if len(out) == n:
            break
        cand = make()
        if cand not in seen and fits(cand):
            seen.add(cand)
            out.append(cand)
    return out


def evolve(sizes: list[int], fits: Callable[[Candidate], bool], fitness: Callable[[Candidate], float],
           cfg: EvolutionConfig, checkpoint: SearchCheckpoint | None = None) -> tuple[Candidate, float, list[dict]]:
    """Best candidate, its fitness and a per-iteration log. `sizes[i]` is the number of choices of gene i;
    `fits(c)` says whether c is inside the budget window."""
    rng = random.Random(cfg.seed)
    seen: set[Candidate] = set()
    scores: dict[Candidate, float] = {}
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        rng.setstate(_as_tuples(saved["rng"]))
        seen = {tuple(c) for c in saved["seen"]}
        scores = {tuple(c): float(v) for c, v in saved["scores"]}
        population, log, start = [tuple(c) for c in saved["population"]], list(saved["log"]), int(saved["next"])
    else:
        population = _draw(fits, seen, lambda: tuple(rng.randrange(n) for n in sizes), cfg.population, cfg.max_tries)
        log, start = [], 0
    if not population:
        raise ValueError("the evolutionary search found no candidate inside the budget window in "
                         f"{cfg.population * cfg.max_tries} random draws: widen the window or the width choices.")
    bar = tqdm(total=cfg.iterations, initial=start, desc="evolution", leave=False, disable=not cfg.progress)
    for it in range(start, cfg.iterations):
        for cand in population:
            if cand not in scores:
                scores[cand] = fitness(cand)
        parents = sorted(scores, key=lambda c: (-scores[c], c))[:cfg.parents]
        log.append({"iteration": it + 1, "best": scores[parents[0]], "evaluated": len(scores)})
        bar.update(1)
        bar.set_postfix(best=f"{scores[parents[0]]:.4f}")
        if it == cfg.iterations - 1:
            break
        population = parents + _children(parents, sizes, fits, seen, rng, cfg)
        if checkpoint is not None:
            checkpoint.save({"rng": rng.getstate(), "seen": [list(c) for c in seen], "population":
                             [list(c) for c in population], "scores": [[list(c), v] for c, v in scores.items()],
                             "log": log, "next": it + 1})
    bar.close()
    best = min(scores, key=lambda c: (-scores[c], c))
    return best, scores[best], log


def _children(parents: list[Candidate], sizes: list[int], fits: Callable[[Candidate], bool], seen: set,
              rng: random.Random, cfg: EvolutionConfig) -> list[Candidate]:
    """`mutations` mutated and `crossovers` crossed children of `parents`, new and inside the window."""
    def mutate() -> Candidate:
        p = rng.choice(parents)
        return tuple(rng.randrange(n) if rng.random() < cfg.mutate_p else g for g, n in zip(p, sizes))

    def cross() -> Candidate:
        a, b = rng.choice(parents), rng.choice(parents)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    return _draw(fits, seen, mutate, cfg.mutations, cfg.max_tries) + _draw(fits, seen, cross, cfg.crossovers,
                                                                           cfg.max_tries)


def _as_tuples(state):
    """random.Random state from its saved form (lists where the state had tuples)."""
    return tuple(_as_tuples(v) for v in state) if isinstance(state, (list, tuple)) else state
