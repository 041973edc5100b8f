"""Discrete structures: the sets of hard solutions that pickgrad chooses from."""

from pickgrad.structures.base import CAPABILITIES, Structure
from pickgrad.structures.onehot import OneHot
from pickgrad.structures.permutation import Permutation
from pickgrad.structures.subset import Subset

__all__ = ["CAPABILITIES", "OneHot", "Permutation", "Structure", "Subset"]
