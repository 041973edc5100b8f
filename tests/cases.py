"""The table of structures that drives the shared estimator tests.

Add a ``StructureCase`` here when a structure lands: every estimator whose needs it meets is then
checked on it for shapes, hardness, dtypes, determinism and finiteness, with no new test code.
Hard outputs are validated against ``structure.enumerate``, so sizes must stay tiny.
"""

from __future__ import annotations

from dataclasses import dataclass

from pickgrad import Arborescence, OneHot, Permutation, SpanningTree, Subset
from pickgrad.structures.base import Structure


@dataclass(frozen=True)
class StructureCase:
    id: str
    structure: Structure
    scores_shape: tuple[int, ...]  # batch dims then the event dims

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.scores_shape[len(self.scores_shape) - self.structure.event_dims :]


STRUCTURE_CASES: list[StructureCase] = [
    StructureCase("onehot", OneHot(), (2, 3, 5)),
    StructureCase("onehot-single", OneHot(), (4,)),
    StructureCase("subset", Subset(2), (2, 5)),
    StructureCase("permutation", Permutation(), (2, 3, 3)),
    StructureCase("permutation-rectangular", Permutation(), (3, 4)),
    StructureCase("spanning-tree", SpanningTree(), (2, 4, 4)),
    StructureCase("spanning-tree-edges", SpanningTree(edge_list=True), (2, 6)),
    StructureCase("arborescence", Arborescence(), (2, 4, 4)),
    StructureCase("arborescence-root-2", Arborescence(root=2), (3, 3)),
]
