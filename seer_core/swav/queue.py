"""The per-rank queue of past embeddings that enlarges Sinkhorn's batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor


class SwAVQueue:
    """Per-rank FIFO of past embeddings of the assigned crops, to enlarge Sinkhorn's batch.

    Small per-rank batches make equipartition too strong a constraint; SwAV scores the newest
    ``length`` past embeddings against the *current* prototypes and lets Sinkhorn spread the
    assignment over them too. As in the original, the queue begins filling at ``start_step`` and
    is only used once it has been filled once (a half-empty queue of zeros would distort the
    assignment). Use in a train step::

        queue_scores = queue.scores(prototypes.weight)      # None while not in use
        loss = swav_loss(scores, n_crops, queue_scores=queue_scores)
        queue.push(embeddings, batch_size, step)            # after scoring, newest first

    Each rank holds its own queue, so a checkpoint must hold every rank's ``state_dict``.
    """

    def __init__(
        self,
        length: int,
        dim: int,
        crops_for_assign: Sequence[int] = (0, 1),
        start_step: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        # The config schema bounds every value; these two also catch a queue built by hand.
        if length and length // world_size == 0:
            raise ValueError(f"length={length} gives an empty queue on each of {world_size} ranks")
        if dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.length = length // world_size
        self.dim = dim
        self.crops_for_assign = tuple(crops_for_assign)
        self.start_step = start_step
        self.filled = 0
        self.embeddings = torch.zeros(len(self.crops_for_assign), self.length, dim, device=device)

    @property
    def in_use(self) -> bool:
        """True once the queue has been filled completely (it then stays full)."""
        return self.length > 0 and self.filled >= self.length

    @torch.no_grad()
    def scores(self, prototype_weights: Tensor | Sequence[Tensor]) -> list[Tensor] | None:
        """Queue scores ``[length, K]`` per assigned crop with the current prototypes, or None.

        ``prototype_weights`` is ``[K, dim]``, or a sequence of ``[K_i, dim]`` blocks (prototypes
        kept in pieces) which are scored as their concatenation. Computed in float32.
        """
        if not self.in_use:
            return None
        weights = (prototype_weights if isinstance(prototype_weights, Tensor)
                   else torch.cat(list(prototype_weights)))
        if weights.ndim != 2 or weights.shape[1] != self.dim:
            raise ValueError(f"prototype_weights must be [K, {self.dim}]: {tuple(weights.shape)}")
        weights = weights.detach().to(device=self.embeddings.device, dtype=torch.float32)
        with torch.autocast(device_type=self.embeddings.device.type, enabled=False):
            return [queue @ weights.t() for queue in self.embeddings]

    @torch.no_grad()
    def push(self, embeddings: Tensor, batch_size: int, step: int) -> None:
        """Shift this step's assigned-crop embeddings in, newest first (no-op before start).

        ``embeddings`` are all crops' embeddings ``[n_crops * batch_size, dim]`` in crop-major
        order, as the model returns them; they are detached and stored in float32.
        """
        if self.length == 0 or step < self.start_step:
            return
        needed = (max(self.crops_for_assign) + 1) * batch_size
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or embeddings.shape[0] < needed:
            raise ValueError(f"embeddings must be [n_crops*{batch_size}, {self.dim}] with at "
                             f"least {needed} rows, got {tuple(embeddings.shape)}")
        if self.embeddings.device != embeddings.device:
            self.embeddings = self.embeddings.to(embeddings.device)
        keep = min(batch_size, self.length)
        for i, crop in enumerate(self.crops_for_assign):
            newest = embeddings[crop * batch_size : (crop + 1) * batch_size].detach()
            if keep < self.length:
                self.embeddings[i, keep:] = self.embeddings[i, : self.length - keep].clone()
            self.embeddings[i, :keep] = newest[:keep].to(torch.float32)
        self.filled = min(self.filled + batch_size, self.length)

    def state_dict(self) -> dict[str, Any]:
        return {
            "embeddings": self.embeddings.detach().cpu().clone(),
            "filled": self.filled,
            "crops_for_assign": list(self.crops_for_assign),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore a saved queue; ``strict=False`` accepts another length (e.g. a new world size).

        A different length keeps the newest embeddings that fit, so a resized queue keeps
        working immediately when it was full and at least as long as the new one.
        """
        saved: Tensor = state["embeddings"]
        expected = tuple(self.embeddings.shape)
        if tuple(state["crops_for_assign"]) != self.crops_for_assign:
            raise ValueError(f"queue state is for crops {state['crops_for_assign']}, expected "
                             f"{list(self.crops_for_assign)}")
        resizable = not strict and saved.ndim == 3 and saved.shape[::2] == expected[::2]
        if tuple(saved.shape) != expected and not resizable:
            raise ValueError(f"queue state has shape {tuple(saved.shape)}, expected {expected}")
        rows = min(saved.shape[1], self.length)
        self.embeddings.zero_()
        self.embeddings[:, :rows] = saved[:, :rows].to(self.embeddings.device, torch.float32)
        self.filled = min(int(state["filled"]), rows)


def queue_picks(old_world: int, old_rows: int, old_filled: int, new_rank: int, new_world: int,
                new_rows: int) -> list[tuple[int, int]]:
    """Which saved queue rows a rank of a resized group takes: (old rank, row), newest first.

    A run may resume with another number of workers; each old rank saved its own queue of
    ``old_rows`` rows (the first ``old_filled`` of them valid, newest first). Row ``i`` of old
    rank ``o`` is global row ``g = i * old_world + o``, so rows of the same age sit side by side;
    new rank ``r`` takes the valid rows with ``g % new_world == r``, in order, as many as its
    own queue holds (``new_rows``). Every saved row goes to at most one rank (never two: the
    ranks' Sinkhorn batches would share embeddings), the newest rows come first on every rank,
    and rows that fit nowhere are dropped. The same world size gives every rank its own queue
    back. Old ranks are assumed to have equal fills (they push equal batches every step).
    """
    if min(old_world, new_world) < 1 or not 0 <= new_rank < new_world:
        raise ValueError(f"bad worlds: old {old_world}, new rank {new_rank} of {new_world}")
    valid = max(0, min(old_filled, old_rows)) * old_world
    return [(g % old_world, g // old_world) for g in range(new_rank, valid, new_world)[:new_rows]]


def gather_queue_rows(parts: Mapping[int, Mapping[str, Any] | None],
                      picks: Sequence[tuple[int, int]], new_rows: int,
                      crops_for_assign: Sequence[int], dim: int) -> dict[str, Any]:
    """A queue ``state_dict`` of ``new_rows`` rows holding the picked rows of the old queues.

    ``parts`` maps old ranks to their saved queue states (None or absent: that rank saved
    none, its rows are skipped, as are rows beyond a part's own fill). Raises ValueError when a
    saved queue does not fit this one (other assigned crops or another embedding size): its
    rows mean nothing here.
    """
    crops = list(crops_for_assign)
    embeddings = torch.zeros(len(crops), new_rows, dim)
    filled = 0
    for old_rank, row in picks:
        part = parts.get(old_rank)
        if part is None:
            continue
        saved: Tensor = part["embeddings"]
        if list(part["crops_for_assign"]) != crops:
            raise ValueError(f"saved queue is for crops {list(part['crops_for_assign'])}, "
                             f"this one for {crops}")
        if saved.ndim != 3 or saved.shape[0] != len(crops) or saved.shape[2] != dim:
            raise ValueError(f"saved queue has shape {tuple(saved.shape)}, this one "
                             f"[{len(crops)}, *, {dim}]")
        if row >= min(int(part["filled"]), saved.shape[1]) or filled >= new_rows:
            continue
        embeddings[:, filled] = saved[:, row].to(torch.float32)
        filled += 1
    return {"embeddings": embeddings, "filled": filled, "crops_for_assign": crops}
