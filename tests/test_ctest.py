"""Runs the C++ tests (CTest, in the build tree of the installed package) as pytest items.

One `ctest` run per session writes a JUnit report; each CTest test becomes one pytest item that passes or
fails with its output, so a single `pytest` runs the C++ and the Python tests.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from adamas_gguf import _build_info

BUILD_DIR = Path(_build_info.BUILD_DIR)
NOT_BUILT = (f"no C++ tests in {BUILD_DIR}: install with -Ccmake.define.ADAMAS_BUILD_TESTS=ON "
             "(`make test` does)")


def _ctest() -> str:
    exe = shutil.which("ctest")
    if exe is None:
        import cmake  # the PyPI cmake package ships ctest

        exe = str(Path(cmake.CMAKE_BIN_DIR) / "ctest")
    return exe


def _test_names() -> list[str]:
    if not (BUILD_DIR / "CTestTestfile.cmake").is_file():
        return [NOT_BUILT]
    out = subprocess.run([_ctest(), "--test-dir", str(BUILD_DIR), "--show-only=json-v1"],
                         capture_output=True, text=True, check=True).stdout
    return [t["name"] for t in json.loads(out)["tests"]]


@pytest.fixture(scope="session")
def ctest_results(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """{test name: (status, output)} from one ctest run."""
    junit = tmp_path_factory.mktemp("ctest") / "junit.xml"
    subprocess.run([_ctest(), "--test-dir", str(BUILD_DIR), "-j2", "--output-junit", str(junit)],
                   capture_output=True, text=True)
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        out = "".join(e.text or "" for e in case.iter() if e.tag in ("system-out", "failure"))
        results[case.get("name")] = (case.get("status", "run"), out)
    return results


@pytest.mark.parametrize("name", _test_names())
def test_cpp(name, ctest_results):
    assert name != NOT_BUILT, NOT_BUILT
    assert name in ctest_results, f"ctest did not run {name}"
    status, output = ctest_results[name]
    assert status == "run", f"{name}: {status}\n{output}"
