"""Every estimator's ``select`` under ``torch.compile(fullgraph=True)`` with validation off.

Forward and backward of the compiled ``select`` are compared with eager autograd under the same
seed. Most pairs use the ``eager`` backend (dynamo traces one graph, fails on any graph break,
and runs it without code generation: fast enough for a test); the default inductor backend
is checked in ``test_compile_inductor.py``.
"""

from __future__ import annotations

import pytest

from func_cases import FuncCase, check_compiled_matches_eager, pair_id, pairs

CASE = "onehot"  # test_compile_subset.py and test_compile_trees.py run the others

# torch 2.13's dynamo warns about instantiating any autograd.Function it traces (its own
# doing), and that it traces through functools.lru_cache (the trees' cached index tables: the
# traced graph recomputes them, with the same values).
pytestmark = [
    pytest.mark.usefixtures("fresh_dynamo_without_validation"),
    pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`"),
]


@pytest.mark.parametrize("pair", [p for p in pairs("compile") if p[0].id == CASE], ids=pair_id)
def test_compiled_select_is_one_graph_and_matches_eager(pair: tuple[FuncCase, str]) -> None:
    check_compiled_matches_eager(*pair)
