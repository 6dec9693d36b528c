"""A pytest plugin: under CI=true a skipped test fails the run, except the cuda-marked ones.

Tests skip, saying why, where a prerequisite is missing (Chromium, npm, ../shared, transformers,
sentence-transformers). That is right on a developer's machine and wrong in CI, where a green run
must mean every test group ran. Loaded by tests/conftest.py; a module-level skip (importorskip)
fails its whole module the same way.
"""

from __future__ import annotations

import os

import pytest

CI_VARIABLE = "CI"


def running_in_ci() -> bool:
    return os.environ.get(CI_VARIABLE, "").lower() in ("true", "1")


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def _fail_instead(report: pytest.TestReport | pytest.CollectReport) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"CI=true forbids skips (a missing prerequisite must fail CI, not hide a test group): {_skip_reason(report)}"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    expected_failure = hasattr(report, "wasxfail")
    if running_in_ci() and report.skipped and not expected_failure and item.get_closest_marker("cuda") is None:
        _fail_instead(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if running_in_ci() and report.skipped:
        _fail_instead(report)
