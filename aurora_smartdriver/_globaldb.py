"""Aurora Global Database: what a change of primary region means for the application.

`region_move` compares two topology snapshots and, when the writer moved to another region,
says so with the figure that bounds the loss: the new primary region's RPO lag as last seen
before the move. A planned switchover waits for the region to catch up and loses nothing; a
managed failover promotes the region with what it had, so commits younger than that lag (and
acknowledged to the application) may be missing. The metadata alone cannot tell the two apart,
so the library reports the figure and leaves the verdict where it belongs: a region that was
known to be caught up (lag 0) lost nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aurora_smartdriver.topology import Topology

__all__ = ["RegionMove", "RegionWatch", "region_move"]


@dataclass(frozen=True, slots=True)
class RegionMove:
    """The writer moved from one region to another between two snapshots."""

    old_region: str
    new_region: str
    old_writer: str | None
    new_writer: str
    rpo_lag_ms_before: float | None
    """The new primary region's RPO lag in the last snapshot before the move (None: unknown)."""

    @property
    def writes_may_be_lost(self) -> bool:
        """Whether acknowledged commits may be missing on the new primary: unless the region
        was known to have everything (lag 0), yes."""
        return self.rpo_lag_ms_before is None or self.rpo_lag_ms_before > 0


def region_move(old: Topology | None, new: Topology) -> RegionMove | None:
    """The move of the writer to another region between `old` and `new`, or None."""
    if old is None or old.writer is None or new.writer is None:
        return None
    before, after = old.writer.region, new.writer.region
    if before is None or after is None or before == after:
        return None
    return RegionMove(
        old_region=before,
        new_region=after,
        old_writer=old.writer.instance_id,
        new_writer=new.writer.instance_id,
        rpo_lag_ms_before=old.regions.get(after),
    )


class RegionWatch:
    """A monitor listener that emits ``global_writer_moved`` when the writer changes region.

    It keeps each region's latest RPO lag, by the time the figure was computed (a row's
    `last_update`): a node that lags answers with an older view of the figures, and that view
    (often "lag 0", from before the lag began) must not replace a newer one. The event carries
    the new primary region's latest figure from before the move.
    """

    def __init__(self, emit: Callable[..., None]) -> None:
        self._emit = emit
        self._last: Topology | None = None
        self._lags: dict[str, tuple[float, float | None]] = {}  # region -> (at, lag)

    def __call__(self, change: object, topology: Topology) -> None:
        move = region_move(self._last, topology)
        if move is not None:
            known = self._lags.get(move.new_region)
            if known is not None:
                move = dataclasses.replace(move, rpo_lag_ms_before=known[1])
            self._lags.clear()
            self._emit(
                "global_writer_moved",
                old=move.old_writer,
                new=move.new_writer,
                old_region=move.old_region,
                new_region=move.new_region,
                rpo_lag_ms_before=move.rpo_lag_ms_before,
                writes_may_be_lost=move.writes_may_be_lost,
            )
        else:
            self._lags = latest_lags(self._lags, topology)
        self._last = topology


def latest_lags(
    known: Mapping[str, tuple[float, float | None]], topology: Topology
) -> dict[str, tuple[float, float | None]]:
    """Each region's RPO lag with the time it was computed, keeping the newer of `known` and
    what `topology` reports (a region whose rows carry no time counts as computed now-ish:
    only a dated figure can be older than another)."""
    out = dict(known)
    for region, lag in topology.regions.items():
        times = [
            h.last_update
            for h in topology.hosts
            if h.region == region and h.last_update is not None
        ]
        at = max(times) if times else float("inf")
        seen = out.get(region)
        if seen is None or at >= seen[0]:
            out[region] = (at, lag)
    return out
