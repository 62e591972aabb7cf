"""docs/details.md stays true: every test it names exists."""

import ast
import re

from conftest import ROOT


def test_every_test_named_in_the_details_table_exists():
    text = (ROOT / "docs" / "details.md").read_text()
    named = set(re.findall(r"`(test_\w+\.py)::(test_\w+)`", text))
    assert len(named) >= 30
    for file, func in named:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        funcs = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert func in funcs, f"docs/details.md names {file}::{func}, which does not exist"
    for file in set(re.findall(r"`(test_\w+\.py)`", text)):
        assert (ROOT / "tests" / file).is_file(), file
