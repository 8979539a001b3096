"""Load Python files that are not in the installed package (a launch file, a tools/ script)."""
import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "tools" / "experiments"


def load_file_module(relative_path: str, name: str):
    """Execute ``ROOT/relative_path`` as a fresh module called ``name`` and return it."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiments_module(name: str):
    """Import ``name`` (e.g. ``analysis.stats``) from ``tools/experiments``, as its scripts do."""
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)
