"""Shard names from a WebDataset brace pattern (``s3://bucket/laion/{00000..41455}.tar``).

Public corpora are published as numbered shards and named that way in webdataset, img2dataset and
the Hugging Face hub, so ``feed.uri`` accepts the same notation: ``{lo..hi}`` ranges (zero padding
kept when an end is written with leading zeros, as ``{00000..41455}``), ``{a,b,c}`` lists, several
groups in one URI (``{train,val}-{000..099}.tar``). Groups do not nest; any other use of a brace
is an error naming the pattern, so a typo fails at start rather than listing nothing.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Sequence

#: The most names a pattern may expand to. The owner of the shard list holds them in memory
#: (~100 bytes a name), and 10M shards of even 1,000 images is 10 billion images; beyond that a
#: prefix listing or a manifest is the right form, so the pattern is refused before expanding.
MAX_SHARD_NAMES = 10_000_000

_GROUP = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")


def _choices(pattern: str, body: str) -> tuple[int, Iterable[str]]:
    """How many alternatives one ``{...}`` group has, and the alternatives (a range's are made
    only once the pattern is known to fit within the bound)."""
    found = _RANGE.fullmatch(body)
    if found:
        lo, hi = found[1], found[2]
        if int(lo) > int(hi):
            raise ValueError(f"shard pattern {pattern!r}: range {{{body}}} is reversed "
                             f"(did you mean {{{hi}..{lo}}}?)")
        padded = any(len(end) > 1 and end.startswith("0") for end in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        numbers = range(int(lo), int(hi) + 1)
        return len(numbers), (str(n).zfill(width) for n in numbers)
    if "," in body:
        items = body.split(",")
        return len(items), items
    raise ValueError(f"shard pattern {pattern!r}: {{{body}}} is neither a range like "
                     "{00000..00099} nor a list like {a,b}")


def expand_shard_pattern(uri: str) -> list[str]:
    """Every name ``uri`` stands for, in order (the first group varies slowest).

    A URI with no brace is itself. Raises ValueError naming the pattern for an unbalanced or
    nested brace, a group that is neither a range nor a list, a reversed range, or more than
    :data:`MAX_SHARD_NAMES` names (counted before expanding, so a typo cannot eat memory).
    """
    literals, groups = _parse(uri)
    return ["".join(itertools.chain.from_iterable(zip(literals, (*combo, ""))))
            for combo in itertools.product(*(choices for _, choices in groups))]


def shard_pattern(names: Sequence[str]) -> str:
    """The inverse of :func:`expand_shard_pattern` for numbered shards of one folder, in
    order: ``runs/shards/00000.tar`` ... ``00031.tar`` -> ``runs/shards/{00000..00031}.tar``
    (what `seer seed --shards` prints as the feed.uri to train on)."""
    folder, _, first = names[0].rpartition("/")
    first_stem, ext = first.split(".", 1)
    last_stem = names[-1].rpartition("/")[2].split(".", 1)[0]
    return f"{folder or '.'}/{{{first_stem}..{last_stem}}}.{ext}"  # `--out .`: ./{..}, not /{..}


def check_shard_pattern(uri: str) -> int:
    """How many names ``uri`` stands for, without making them: the FeedSpec check at start,
    so a malformed pattern fails in the driver, not in every read task. Raises as
    :func:`expand_shard_pattern` does."""
    return math.prod(count for count, _ in _parse(uri)[1])


def _parse(uri: str) -> tuple[list[str], list[tuple[int, Iterable[str]]]]:
    """The literal parts and the groups of a pattern, checked and bounded (none expanded)."""
    literals: list[str] = []
    groups: list[tuple[int, Iterable[str]]] = []
    start = 0
    for match in _GROUP.finditer(uri):
        literals.append(uri[start:match.start()])
        groups.append(_choices(uri, match[1]))
        start = match.end()
    literals.append(uri[start:])
    if any(brace in literal for literal in literals for brace in "{}"):
        raise ValueError(f"shard pattern {uri!r}: unbalanced or nested braces")
    total = math.prod(count for count, _ in groups)
    if total > MAX_SHARD_NAMES:
        raise ValueError(f"shard pattern {uri!r} stands for {total:,} shards, more than "
                         f"{MAX_SHARD_NAMES:,}: list a prefix or use a manifest instead")
    return literals, groups
