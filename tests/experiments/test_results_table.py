"""The markdown results table: a chance column only where a chance level exists."""

from __future__ import annotations

from typing import Any

from pickgrad.experiments.results import markdown_table


def _tables(below_chance: float | None) -> list[str]:
    summary: dict[str, Any] = {"mean": 0.5, "std": 0.1}
    if below_chance is not None:
        summary["below_chance"] = below_chance
    entry = {"method": "tree", "estimator": "st-gumbel", "seeds": [0, 1], "precision": summary}
    runs = [
        {"method": "tree", "estimator": "st-gumbel", "seed": s, "best_step": 10,
         "test": {"precision": 0.5}}
        for s in (0, 1)
    ]  # fmt: skip
    return markdown_table([entry], runs, ("precision",), "precision").split("\n\n")


def test_the_chance_column_shows_the_share_of_seeds_below_chance() -> None:
    summary_table, _ = _tables(0.5)
    header, rule, row = summary_table.splitlines()
    assert header.endswith("| precision < chance |")
    assert rule.count("---") == header.count("|") - 1
    assert row.endswith("| 50% |")


def test_no_chance_column_without_a_chance_level() -> None:
    summary_table, per_seed = _tables(None)
    header, rule, row = summary_table.splitlines()
    assert "chance" not in summary_table
    assert header == "| method | estimator | seeds | precision |"
    assert rule.count("---") == 4 and row.count("|") == header.count("|")
    assert per_seed.splitlines()[0] == "| method | estimator | seed | best step | precision |"
