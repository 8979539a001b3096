"""The README's Status table is what tools/experiments/readme_status.py makes of docs/results."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "experiments" / "readme_status.py"


def test_the_readme_status_table_is_current():
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_stale_table_is_caught(tmp_path):
    readme = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    stale = text.replace("<!-- status-table:end -->", "| a stray row | y | z |\n<!-- status-table:end -->")
    assert stale != text
    readme.write_text(stale)
    out = subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "not current" in out.stderr
    assert subprocess.run([sys.executable, str(SCRIPT), "--readme", str(readme)]).returncode == 0
    assert readme.read_text() == text  # regenerated from the data, the stray row is gone
