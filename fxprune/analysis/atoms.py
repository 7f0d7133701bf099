"""Channel atoms: one atom per channel position, unified across the graph.

Every channel a producer creates (a conv's output channel, a parameter's entry) is an *atom*.
Ops that force two positions to be kept or removed together *unify* their atoms (union-find).
A reshape that splits a channel dimension into several (heads x head_dim, groups x channels) binds
each atom to a *product term*: the tuple of factor atoms it is made of. A term is alive iff every
factor is alive, which is exactly what keeps reshapes valid after slicing (the kept set of the split
dimension is a Cartesian product). Unifying two bound atoms unifies their terms factor by factor, as
in first-order unification. Atoms that cannot be reasoned about are *frozen* (always kept).

`UNIT` stands for a position with no channel identity (a size-1 factor): it is always alive.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNIT = -1


@dataclass
class Space:
    """A block of fresh atoms created together, e.g. the output channels of one conv."""

    size: int
    origin: str
    first: int
    kind: str = "channels"  # or "blocks": conv groups, norm groups, attention heads


@dataclass
class AtomTable:
    """Union-find over atoms, with product terms and freezing; also union-find over spaces."""

    parent: list[int] = field(default_factory=list)
    space_of: list[int] = field(default_factory=list)
    spaces: list[Space] = field(default_factory=list)
    space_parent: list[int] = field(default_factory=list)
    term: dict[int, tuple[int, ...]] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)  # root atom -> why it must be kept
    factor_spaces: set[int] = field(default_factory=set)  # spaces used as factors of products
    origin: dict[int, dict[int, int]] = field(default_factory=dict)  # root -> {factor space: index}

    # -- creation -------------------------------------------------------------------------
    def new_space(self, size: int, origin: str, kind: str = "channels") -> np.ndarray:
        """Fresh atoms for `size` channels; a size-1 space is the UNIT (nothing to prune)."""
        if size <= 1:
            return np.full((size,), UNIT, dtype=np.int64)
        sid = len(self.spaces)
        first = len(self.parent)
        self.spaces.append(Space(size, origin, first, kind))
        self.space_parent.append(sid)
        self.parent.extend(range(first, first + size))
        self.space_of.extend([sid] * size)
        return np.arange(first, first + size, dtype=np.int64)

    # -- union-find -----------------------------------------------------------------------
    def find(self, a: int) -> int:
        return UNIT if a == UNIT else _root(self.parent, a)

    def space_root(self, sid: int) -> int:
        return _root(self.space_parent, sid)

    def _union_spaces(self, a: int, b: int) -> None:
        ra, rb = self.space_root(self.space_of[a]), self.space_root(self.space_of[b])
        if ra != rb:
            self.space_parent[rb] = ra

    def leaves(self, a: int, depth: int = 0) -> tuple[int, ...]:
        """The free (unbound) root atoms a position is made of, in row-major factor order."""
        r = self.find(a)
        if r == UNIT:
            return ()
        t = self.term.get(r)
        if t is None or depth > 32:
            return (r,)
        out: tuple[int, ...] = ()
        for f in t:
            out += self.leaves(f, depth + 1)
        return out

    def unify(self, a: int, b: int) -> None:
        """Force positions `a` and `b` to share one fate (kept together or removed together)."""
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        if ra == UNIT or rb == UNIT:
            other = rb if ra == UNIT else ra
            self.freeze_atom(other, "tied to a position that has no channel identity")
            return
        collapse = self._merge_origins(ra, rb)
        ta, tb = self.term.pop(ra, None), self.term.pop(rb, None)
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        self._union_spaces(ra, rb)
        if ta is not None and tb is not None:
            self.term[ra] = ta
            self._unify_terms(ta, tb)
        elif ta is not None or tb is not None:
            self._bind(ra, ta if ta is not None else tb)
        if collapse:
            self.freeze_class(ra, "two different positions of one factor (a conv group, a head, a shuffle "
                                  "block) were tied together, so the factorised layout cannot be kept")

    def _size(self, a: int) -> int:
        """Size of the factor an atom indexes (the size of the space it was created in)."""
        return self.spaces[self.space_of[a]].size

    def mark_factors(self, arr) -> None:
        """Declare the spaces of `arr` factors of a product layout (their positions must stay distinct)."""
        for a in arr.tolist():
            if a != UNIT:
                self.factor_spaces.add(self.space_of[a])

    def _origin(self, root: int) -> dict[int, int]:
        got = self.origin.get(root)
        if got is not None:
            return got
        sid = self.space_of[root]
        return {sid: root - self.spaces[sid].first} if sid in self.factor_spaces else {}

    def _merge_origins(self, ra: int, rb: int) -> bool:
        """Merge the factor positions two roots stand for; True if one factor's positions collapse."""
        fs, origin, space_of = self.factor_spaces, self.origin, self.space_of
        if not (ra in origin or rb in origin or space_of[ra] in fs or space_of[rb] in fs):
            return False
        oa, ob = self._origin(ra), self._origin(rb)
        if not oa and not ob:
            return False
        self.origin.pop(rb, None)
        self.origin[ra] = {**ob, **oa}
        return any(s in ob and ob[s] != i for s, i in oa.items())

    def freeze_class(self, atom: int, reason: str) -> None:
        """Freeze every atom whose space is connected to `atom`'s (used when a layout degenerates)."""
        cls = self.space_root(self.space_of[self.find(atom)])
        for sid, sp in enumerate(self.spaces):
            if self.space_root(sid) == cls:
                for a in range(sp.first, sp.first + sp.size):
                    self.freeze_atom(a, reason)

    def unify_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        if self._attach_fresh(a, b) or self._attach_fresh(b, a):
            return
        for x, y in zip(a.tolist(), b.tolist()):
            self.unify(x, y)

    def _attach_fresh(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Bulk unify when every atom of `b` is fresh (a root with no term, freeze, or factor role):
        each simply joins the root of its partner in `a` -- what `unify` would do, without the checks."""
        bl, al = b.tolist(), a.tolist()
        if not bl or min(al) < 0 or min(bl) < 0 or len(set(bl)) != len(bl):
            return False
        parent, term, frozen, origin, fs = self.parent, self.term, self.frozen, self.origin, self.factor_spaces
        if any(parent[y] != y or y in term or y in frozen or y in origin or self.space_of[y] in fs for y in bl):
            return False
        roots = [self.find(x) for x in al]
        if set(roots) & set(bl):
            return False
        for y, r in zip(bl, roots):
            parent[y] = r
            self._union_spaces(r, y)
        return True

    def bind_product(self, a: int, factors: tuple[int, ...]) -> None:
        """State that position `a` is the product of `factors` (one atom per split dimension)."""
        factors = tuple(f for f in factors if f != UNIT)
        if not factors:
            self.unify(a, UNIT)
            return
        if len(factors) == 1:
            self.unify(a, factors[0])
            return
        ra = self.find(int(a))
        if ra == UNIT:
            for f in factors:
                self.freeze_atom(f, "product of a position that has no channel identity")
            return
        old = self.term.get(ra)
        if old is None and ra not in self.frozen and all(
                self.parent[f] == f and f != ra and f not in self.term for f in factors):
            self.term[ra] = factors  # fast path: fresh factors cannot refer back to `ra`
        elif old is None:
            self._bind(ra, factors)
        else:
            self._unify_terms(old, factors)

    def _bind(self, root: int, t: tuple[int, ...]) -> None:
        if root in {self.find(x) for x in t} or root in self._all_leaves(t):
            # the product cannot be recorded, so its factors must not be pruned on their own either (a
            # cat([x, x]) into a grouped conv added back to x: x = (conv group, channel in group) = group)
            reason = "channel structure refers to itself (cyclic reshape)"
            self.freeze_atom(root, reason)
            for leaf in self._all_leaves(t):
                self.freeze_atom(leaf, reason)
            return
        self.term[root] = t
        reason = self.frozen.pop(root, None)
        if reason is not None:
            for leaf in self._all_leaves(t):
                self.frozen.setdefault(leaf, reason)

    def _all_leaves(self, t: tuple[int, ...]) -> set[int]:
        out: set[int] = set()
        for f in t:
            out.update(self.leaves(f))
        return out

    def _unify_terms(self, ta: tuple[int, ...], tb: tuple[int, ...]) -> None:
        la = [x for f in ta for x in self.leaves(f)]
        lb = [x for f in tb for x in self.leaves(f)]
        if len(la) == len(lb) and all(self._size(x) == self._size(y) for x, y in zip(la, lb)):
            for x, y in zip(la, lb):
                self.unify(x, y)
            return
        for x in la + lb:
            self.freeze_atom(x, "two reshapes split the same channels in incompatible ways")

    # -- freezing and queries ---------------------------------------------------------------
    def freeze_atom(self, a: int, reason: str) -> None:
        r = self.find(int(a))
        if r == UNIT:
            return
        for leaf in self.leaves(r) or (r,):
            self.frozen.setdefault(leaf, reason)

    def freeze_array(self, arr: np.ndarray, reason: str) -> None:
        seen: set[int] = set()
        for a in arr.tolist():
            r = self.find(a)
            if r not in seen:
                seen.add(r)
                self.freeze_atom(r, reason)

    def group_key(self, a: int) -> int:
        """The space-class (channel group id) a free root atom belongs to."""
        return self.space_root(self.space_of[a])

    def frozen_reason(self, root: int) -> str | None:
        return self.frozen.get(self.find(root))


def _root(parent: list[int], a: int) -> int:
    """The root of `a` in a union-find forest, compressing the path on the way (both the atom and the space
    forests use it)."""
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:
        parent[a], a = root, parent[a]
    return root
