"""The `incomeops` command as a user runs it: a real subprocess, in a throwaway project folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

INCOMEOPS = str(Path(sys.executable).with_name("incomeops"))


def run(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    "Run `incomeops *args` with its settings rooted at `project`."
    environ = {**os.environ, "INCOMEOPS_ROOT": str(project), "INCOMEOPS_NOTEBOOKS_DIR": str(REPO / "nbs"),
               "YDATA_PROFILING_NO_ANALYTICS": "1", **env}
    return subprocess.run([INCOMEOPS, *args], env=environ, capture_output=True, text=True, timeout=600)


def test_data_builds_a_versioned_snapshot_and_a_rerun_gives_the_same_version(project, mirror):
    first = run(project, "data", INCOMEOPS_DATA_MIRROR=str(mirror))
    assert first.returncode == 0, first.stderr
    version = (project / "data/processed/latest").read_text().strip()
    assert f"dataset version {version}: 32,537 train + 16,281 test rows" in first.stdout
    manifest = json.loads((project / "data/processed" / version / "manifest.json").read_text())
    assert manifest["rows"]["adult.data"] == 32_561 and manifest["rows"]["adult.test"] == 16_281
    assert manifest["sources"]["adult.test"]["md5"] == "35238206dfdf7f1fe215bbb874adecdc"

    second = run(project, "data", INCOMEOPS_DATA_MIRROR=str(mirror))
    assert second.returncode == 0, second.stderr
    assert f"dataset version {version}:" in second.stdout
    assert sorted(p.name for p in (project / "data/processed").iterdir()) == [version, "latest"]


def test_data_with_a_broken_mirror_prints_one_clear_line_and_caches_nothing(project, tmp_path, mirror):
    broken = tmp_path / "mirror"
    broken.mkdir()
    (broken / "adult.data").write_bytes((mirror / "adult.data").read_bytes()[:-10])
    res = run(project, "data", INCOMEOPS_DATA_MIRROR=str(broken))
    assert res.returncode == 1
    assert "error: adult.data is truncated: 3,974,295 of 3,974,305 bytes" in res.stderr
    assert "Traceback" not in res.stderr
    assert list((project / "data/raw").iterdir()) == []


def test_data_without_network_names_the_source_it_could_not_reach(project):
    res = run(project, "data", INCOMEOPS_DATA_MIRROR="", INCOMEOPS_DATA_URL="http://127.0.0.1:9/adult.zip")
    assert res.returncode == 1
    assert "error: could not download http://127.0.0.1:9/adult.zip" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.timeout(300)
def test_profile_writes_the_report_and_the_executed_notebook(project, mirror):
    res = run(project, "profile", "--mode", "minimal", INCOMEOPS_DATA_MIRROR=str(mirror))
    assert res.returncode == 0, res.stderr[-2000:]
    report = project / "reports/profile.html"
    assert report.stat().st_size > 100_000
    assert "ydata" in report.read_text(errors="replace").lower()
    assert (project / "reports/exploration.html").is_file()
    assert (project / "reports/exploration.ipynb").is_file()
