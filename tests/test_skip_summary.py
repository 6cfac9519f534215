"""The closing word of a pytest run (tests/conftest.py): the groups of tests skipped because a system component is missing,
and the make target that installs it; nothing when none was skipped, and pytest's closing line as it was."""
import re
import types

import pytest

import conftest

SAMPLE = """
import pytest

@pytest.mark.skipif(True, reason="Debian's chromium is not installed")
def test_in_a_browser(): pass

@pytest.mark.parametrize("n", [1, 2])
def test_on_redis(n): pytest.skip("redis-server is not installed")

@pytest.mark.skip(reason="not today")
def test_for_another_reason(): pass

def test_that_runs(): pass
"""
ONLY_OTHER_SKIPS = """
import pytest

@pytest.mark.skip(reason="not today")
def test_for_another_reason(): pass

def test_that_runs(): pass
"""


def run(pytester, source: str, *args: str) -> pytest.RunResult:
    "Run pytest on one generated test file with the summary hook of tests/conftest.py and nothing else of ours."
    pytester.makepyfile(test_sample=source)
    plugin = types.ModuleType("skip_summary")
    plugin.pytest_terminal_summary = conftest.pytest_terminal_summary
    return pytester.runpytest(*args, plugins=[plugin])


@pytest.mark.parametrize("args", [(), ("-q", "-rs")])
def test_the_skipped_groups_and_the_target_that_installs_them_come_last(pytester, args):
    result = run(pytester, SAMPLE, *args)
    result.assert_outcomes(passed=1, skipped=4)
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "skipped: system components missing" in line)
    assert lines[start + 1:start + 3] == ["browser tests (Chromium): 1 skipped", "Celery/Redis tests (redis-server): 2 skipped"]
    assert "`make system-deps` installs" in lines[start + 3]
    assert not any("PostgreSQL tests" in line or "not today" in line for line in lines[start:-1])
    assert re.fullmatch(r"=* ?1 passed, 4 skipped in [0-9.]+s ?=*", lines[-1])


def test_nothing_is_said_when_no_system_component_is_missing(pytester):
    result = run(pytester, ONLY_OTHER_SKIPS, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert "system-deps" not in result.stdout.str() and "system components" not in result.stdout.str()
    assert "not today" in result.stdout.str()          # pytest's own list of skips is untouched
