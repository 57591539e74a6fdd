"""The tree's layering: the library never imports the app."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP_PACKAGES = ("xtok_app", "app_pages", "app", "streamlit")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_of_the_library_imports_the_app():
    modules = sorted((ROOT / "xtok_core").rglob("*.py"))
    assert len(modules) > 30  # the whole package is read, not an empty glob
    offending = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.split(".")[0] in APP_PACKAGES)
                 for p in modules}
    assert {p: n for p, n in offending.items() if n} == {}


def test_the_import_check_sees_an_app_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from xtok_app.runs import runs_dir\n    import streamlit as st\n")
    assert {"xtok_app.runs", "streamlit"} <= _imports(probe)
