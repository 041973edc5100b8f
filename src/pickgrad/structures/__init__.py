"""Discrete structures: the sets of hard solutions that pickgrad chooses from."""

from pickgrad.structures.arborescence import Arborescence
from pickgrad.structures.base import CAPABILITIES, Structure
from pickgrad.structures.edges import edge_index, edges_to_matrix, matrix_to_edges
from pickgrad.structures.onehot import OneHot
from pickgrad.structures.permutation import Permutation
from pickgrad.structures.solver import Solver, monotone_path_argmax
from pickgrad.structures.spanning_tree import SpanningTree
from pickgrad.structures.subset import Subset

__all__ = [
    "CAPABILITIES",
    "Arborescence",
    "OneHot",
    "Permutation",
    "Solver",
    "SpanningTree",
    "Structure",
    "Subset",
    "edge_index",
    "edges_to_matrix",
    "matrix_to_edges",
    "monotone_path_argmax",
]
