"""``select`` on SpanningTree and Arborescence under ``torch.compile(fullgraph=True)``, validation off.

Forward and backward of the compiled ``select`` are compared with eager autograd under the same
seed, with the ``eager`` backend (dynamo traces one graph, fails on any graph break, and runs it
without code generation: fast enough for a test). The pairs are ``test_func_trees.TREE_CASES``'
compile lists (Chu-Liu/Edmonds is one opaque custom operator there). OneHot, Subset and the
inductor case are in ``test_compile_onehot.py``, ``test_compile_subset.py``,
``test_compile_inductor.py``; docs/compile.md lists the pairs that do not compile yet, and why.
"""

from __future__ import annotations

import pytest

from func_cases import FuncCase, check_compiled_matches_eager, pair_id
from test_func_trees import tree_pairs

# torch 2.13's dynamo warns about instantiating any autograd.Function it traces (its own
# doing), and that it traces through functools.lru_cache (the trees' cached index tables: the
# traced graph recomputes them, with the same values).
pytestmark = [
    pytest.mark.usefixtures("fresh_dynamo_without_validation"),
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`"),
]


@pytest.mark.parametrize(
    "pair",
    tree_pairs("compile"),
    ids=pair_id,
)
def test_compiled_select_is_one_graph_and_matches_eager(pair: tuple[FuncCase, str]) -> None:
    check_compiled_matches_eager(*pair)
