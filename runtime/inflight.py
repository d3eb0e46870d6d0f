"""Batches in flight through pipeline slots: submit when a slot is free, collect the oldest when every slot is busy.

Anything with ``pending`` (batches submitted, not yet collected), ``slots`` (batches it computes at once) and
``collect()`` (the oldest batch's outputs) is a :class:`Pipelined`: a backend, a detector, a Triton client. Every
caller that overlaps preparing the next batch with computing the last goes through these three functions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Pipelined(Protocol[T]):
    """Batches submitted in order and collected in the same order."""

    @property
    def pending(self) -> int: ...

    @property
    def slots(self) -> int: ...

    def collect(self) -> T: ...


def full(pipeline: Pipelined) -> bool:
    """Whether every slot is busy: the next submit must wait for a collect."""
    return pipeline.pending >= pipeline.slots


def make_room(pipeline: Pipelined[T], keep: Callable[[T], object]) -> None:
    """Collect the oldest batches into ``keep`` until a slot is free for the next submit."""
    while full(pipeline):
        keep(pipeline.collect())


def drain(pipeline: Pipelined[T], keep: Callable[[T], object]) -> None:
    """Collect every batch still in flight into ``keep``, oldest first."""
    while pipeline.pending:
        keep(pipeline.collect())
