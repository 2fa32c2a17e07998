import ast
import subprocess
import sys
from pathlib import Path

import geossm.serialization as ser

SOURCE = Path(ser.__file__).parent


def test_public_names_resolve():
    for name in ser.__all__:
        assert hasattr(ser, name), name
    from geossm.serialization import events
    for name in events.__all__:
        assert hasattr(events, name), name


def test_never_imports_kernels():
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "kernels" not in (node.module or ""), f"{path.name} imports {node.module}"
            elif isinstance(node, ast.Import):
                assert not any("kernels" in a.name for a in node.names), path.name
    code = ("import sys, geossm.serialization, geossm.serialization.events; "
            "print(any(m.startswith('geossm.kernels') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
