"""Load a Python file that is not in a package (a launch file, a tools/ script) as a module."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_file_module(relative_path: str, name: str):
    """Execute ``ROOT/relative_path`` as a fresh module called ``name`` and return it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
