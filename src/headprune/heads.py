"""A head and a set of heads: the one definition of each, and every spelling of a set, made here.

A head is `(layer, head)` in the original model's coordinates (also after layers were removed). A
set of heads (what a candidate prunes) is a `HeadSet`: a frozenset of heads, so it is hashable, equal
to any frozenset of the same pairs and usable wherever one is. What the project writes of a set is
read and written only here:

- `pairs()`: sorted `[[layer, head], ...]`, as summary.json holds it;
- `key()`: the results store's key string `[[0,3],[1,0]]` (committed stores are keyed by it: never
  change its spelling);
- `ordered()`: the sorted tuple of pairs a `SeedTask` carries;
- `by_layer()`: `{layer: [heads]}`, what surgery walks;
- `parse(spec, ...)` and `spec(n_heads)`: the head specification of the command line ('0:1,2;3:*').

This module imports nothing of headprune's but its errors: every other module may depend on it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from .errors import HeadpruneError

Head = tuple[int, int]


class HeadSet(frozenset):
    """A set of (layer, head) pairs, from pairs or from `{layer: [heads]}` (layers may be strings)."""

    def __new__(cls, heads: Iterable[Iterable[int]] | Mapping[int | str, Iterable[int]] = ()) -> HeadSet:
        if isinstance(heads, Mapping):
            pairs = [(int(layer), int(head)) for layer, hs in heads.items() for head in hs]
        else:
            pairs = [(int(layer), int(head)) for layer, head in heads]
        return super().__new__(cls, pairs)

    def __repr__(self) -> str:
        return f"HeadSet({self.pairs()})"

    def ordered(self) -> tuple[Head, ...]:
        """The heads sorted by layer, then head."""
        return tuple(sorted(self))

    def pairs(self) -> list[list[int]]:
        """`[[layer, head], ...]` sorted, as summary.json writes a pruned set."""
        return [[layer, head] for layer, head in self.ordered()]

    def key(self) -> str:
        """The results store's spelling of the set (part of every committed store key)."""
        return json.dumps(self.pairs(), separators=(",", ":"))

    def by_layer(self) -> dict[int, list[int]]:
        """`{layer: [heads]}`, layers and heads sorted, only layers with a head."""
        out: dict[int, list[int]] = {}
        for layer, head in self.ordered():
            out.setdefault(layer, []).append(head)
        return out

    def within(self, n_layers: int, n_heads: int) -> HeadSet:
        """This set, checked against a model of `n_layers` x `n_heads` (one error line otherwise)."""
        for layer, head in self.ordered():
            if not 0 <= layer < n_layers:
                raise HeadpruneError(f"head specification: layer {layer} does not exist (the model has {n_layers})")
            if not 0 <= head < n_heads:
                raise HeadpruneError(
                    f"head specification: head {head} of layer {layer} does not exist ({n_heads} per layer)"
                )
        return self

    def spec(self, n_heads: int) -> str:
        """The head specification: '0:1,2;3:*' (* where a layer loses all `n_heads`); '' when empty."""
        return ";".join(f"{layer}:*" if len(hs) == n_heads else f"{layer}:{','.join(map(str, hs))}"
                        for layer, hs in self.by_layer().items())

    @classmethod
    def parse(cls, spec: str, n_layers: int, n_heads: int) -> HeadSet:
        """Read a head specification, '0:1,2;3:*' (heads 0-based, ranges like 4-7, * for all); '' -> empty.

        An unreadable part is one error line saying which piece is wrong (the `--prune` option's)."""
        out: set[Head] = set()
        for part in spec.strip().split(";"):
            part = part.strip()
            if part:
                out.update(_parse_part(part, n_layers, n_heads))
        return cls(out)


def _parse_part(part: str, n_layers: int, n_heads: int) -> list[Head]:
    match = re.fullmatch(r"(\d+)\s*:\s*(\*|\d+(?:\s*-\s*\d+)?(?:\s*,\s*\d+(?:\s*-\s*\d+)?)*)", part)
    if not match:
        raise HeadpruneError(
            f"--prune: cannot read '{part}'; write LAYER:HEADS pairs such as '0:1,2;3:*' (heads 0-based, "
            f"ranges like 4-7, * for all){_spec_detail(part)}"
        )
    layer = int(match.group(1))
    if layer >= n_layers:
        raise HeadpruneError(f"--prune: layer {layer} does not exist (the model has {n_layers}: 0-{n_layers - 1})")
    if match.group(2) == "*":
        heads = list(range(n_heads))
    else:
        heads = []
        for item in match.group(2).split(","):
            lo, _, hi = item.strip().partition("-")
            if hi and int(hi) < int(lo):
                raise HeadpruneError(
                    f"--prune: '{item.strip()}' in '{part}' is a backwards range (write {hi.strip()}-{lo.strip()})"
                )
            heads += list(range(int(lo), int(hi or lo) + 1))
    for h in heads:
        if h >= n_heads:
            raise HeadpruneError(
                f"--prune: head {h} of layer {layer} does not exist ({n_heads} per layer: 0-{n_heads - 1})"
            )
    return [(layer, h) for h in heads]


def _spec_detail(part: str) -> str:
    """Which piece of an unreadable LAYER:HEADS part is wrong, as '; ...' (or '' when unclear)."""
    layer, colon, heads = part.partition(":")
    if not colon:
        return "; no ':' between the layer and its heads"
    if not layer.strip().isdigit():
        return f"; '{layer.strip()}' is not a layer number"
    for item in heads.split(","):
        if not re.fullmatch(r"\s*(\*|\d+(\s*-\s*\d+)?)\s*", item):
            return f"; '{item.strip()}' is not a head number or range" if item.strip() else "; a head is missing"
    return ""


__all__ = ["Head", "HeadSet"]
