"""Under CI=true a skip fails the run (tests/ci_skips.py), except for cuda-marked tests."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SUITE = """
import pytest

def test_runs():
    pass

def test_needs_a_missing_tool():
    pytest.skip("chromium is not installed")

@pytest.mark.cuda
def test_needs_a_gpu():
    pytest.skip("no CUDA GPU on this machine")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""

MODULE_SKIP = """
import pytest
pytest.importorskip("a_package_that_is_not_installed")

def test_never_collected():
    pass
"""


@pytest.fixture
def run(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini("[pytest]\nmarkers =\n    cuda: needs a GPU")
    pytester.makepyfile(test_suite=SUITE, test_module_skip=MODULE_SKIP)

    def run_with(ci: str | None):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest_subprocess("-p", "tests.ci_skips", "-rs", "--continue-on-collection-errors")

    return run_with


def test_under_ci_a_skip_fails_but_a_cuda_skip_and_an_xfail_do_not(run):
    result = run("true")
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, errors=1)
    result.stdout.fnmatch_lines(["*CI=true forbids skips*chromium is not installed*"])
    result.stdout.fnmatch_lines(["*CI=true forbids skips*a_package_that_is_not_installed*"])


def test_outside_ci_skips_stay_skips(run):
    run(None).assert_outcomes(passed=1, skipped=3, xfailed=1)
    run("false").assert_outcomes(passed=1, skipped=3, xfailed=1)
