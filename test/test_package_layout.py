"""Package conventions: ROS-free core, package.xml format 3, linters, msg/ complete."""
from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vla_rl_ros"
ROS_MODULES = {"rclpy", "launch", "launch_ros", "rosidl_runtime_py", "rosbag2_py", "std_msgs",
               "sensor_msgs", "geometry_msgs", "trajectory_msgs", "visualization_msgs",
               "diagnostic_msgs", "builtin_interfaces", "std_srvs", "rcl_interfaces"}


def imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_source_never_imports_ros():
    offenders = []
    for path in (PACKAGE / "core").rglob("*.py"):
        for name in imported_top_modules(path):
            if name.split(".")[0] in ROS_MODULES or name.startswith("vla_rl_ros.msg") \
                    or name.startswith("vla_rl_ros.nodes"):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_importing_every_core_module_loads_no_ros_module():
    """Also catches indirect imports (a core module importing a helper that imports rclpy)."""
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                     for p in (PACKAGE / "core").rglob("*.py") if p.name != "__main__.py")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m.removesuffix('.__init__'))\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ROS_MODULES)!r} "
        "or m.startswith('vla_rl_ros.msg'))\n"
        "print('ROS:' + ','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ROS:", out.stdout


def test_pytest_collects_nothing_outside_test():
    """Product and tools modules are never named like tests: pytest would import and collect them."""
    named_like_tests = [str(p.relative_to(ROOT)) for folder in (PACKAGE, ROOT / "tools")
                        for pattern in ("test_*.py", "*_test.py") for p in folder.rglob(pattern)]
    assert not named_like_tests, f"rename these (pytest collects them as tests): {named_like_tests}"
    out = subprocess.run([sys.executable, "-m", "pytest", "vla_rl_ros", "tools", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, out.stdout[-3000:] + out.stderr[-2000:]


def test_package_xml_is_format_3_with_real_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "vla_rl_ros"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    for needed in ("rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "trajectory_msgs",
                   "visualization_msgs", "diagnostic_msgs", "rosidl_default_generators",
                   "rosidl_default_runtime", "ament_cmake"):
        assert needed in deps, f"package.xml lacks {needed}"
    assert root.find("member_of_group").text == "rosidl_interface_packages"
    assert root.find("export/build_type").text == "ament_cmake"


def test_every_msg_file_is_built_by_cmake():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for msg in (ROOT / "msg").glob("*.msg"):
        assert f'"msg/{msg.name}"' in cmake, f"{msg.name} missing from CMakeLists.txt"


def test_every_msg_field_is_documented():
    for msg in (ROOT / "msg").glob("*.msg"):
        for line in msg.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                assert "#" in line or line.split()[0].endswith("Header"), \
                    f"{msg.name}: undocumented field {line!r}"


def test_flake8_clean():
    pytest.importorskip("flake8")
    out = subprocess.run([sys.executable, "-m", "flake8", "--max-line-length", "110",
                          "--extend-ignore", "E203,W503,W504", "vla_rl_ros", "test", "launch",
                          "setup.py"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]


def test_pep257_docstrings_on_public_package_code():
    pytest.importorskip("pydocstyle")
    # Same spirit as ament_pep257: public modules, classes and functions carry docstrings.
    out = subprocess.run([sys.executable, "-m", "pydocstyle", "--convention", "pep257",
                          "--add-ignore", "D105,D107,D203,D212,D213,D401,D403,D404,D413",
                          "vla_rl_ros"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-5000:]
