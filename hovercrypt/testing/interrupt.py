"""A stand-in for a process killed mid-slide, built on the engine's ``on_region_committed`` callback."""

from __future__ import annotations

from collections.abc import Callable


class RunInterrupted(BaseException):  # noqa: N818 - mimics a kill, so generic handlers don't swallow it
    """Raised by :func:`stop_after`, like a killed process (``BaseException``: no handler catches it)."""


def stop_after(n: int) -> Callable[[str, int], None]:
    """An ``on_region_committed`` callback that raises :class:`RunInterrupted` at the ``n``-th commit.

    Commits are counted over every slide of the run, as a kill would stop it wherever it was.
    """
    seen = [0]

    def hook(slide: str, region: int) -> None:
        seen[0] += 1
        if seen[0] >= n:
            raise RunInterrupted(f"stopped after {seen[0]} committed regions ({slide}, region {region})")

    return hook
