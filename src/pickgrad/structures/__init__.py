"""Discrete structures: the sets of hard solutions that pickgrad chooses from."""

from pickgrad.structures.base import CAPABILITIES, Structure
from pickgrad.structures.onehot import OneHot

__all__ = ["CAPABILITIES", "OneHot", "Structure"]
