"""How merfishflow installs and presents itself: versions, README, conda env, rule docs, console, .test config."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import REPO, snakemake_env
from merfishflow import __version__


def constraints() -> dict:
    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_dependency_is_a_range_that_the_locked_version_satisfies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    pins = constraints()
    for line in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(line)
        assert not any(s.operator == "==" for s in requirement.specifier), line
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not locked in requirements/constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{line} excludes the locked {name}=={pins[name]}"


def test_readme_starts_with_the_two_commands_and_installs_the_locked_versions():
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[2] == "```bash" and lines[5] == "```"
    setup, tests = lines[3], lines[4]
    assert "pip install -c requirements/constraints.txt -e '.[test]'" in setup and "snakemake --cores 2" in setup
    assert tests == ".venv/bin/python -m pytest"
    assert "-c requirements/constraints.txt -e '.[test]'" in (REPO / ".ci" / "run").read_text()


def test_conda_env_pins_the_locked_versions_and_installs_the_package_from_the_workflow(tmp_path):
    env = yaml.safe_load((REPO / "envs" / "merfishflow.yaml").read_text())
    pip_lines = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = constraints()
    for line in pip_lines:
        if "==" in line:
            name, version = line.split("==")
            assert pins[name.lower().replace("_", "-")] == version, line
    # Conda hands the pip section to pip as a requirements file in a folder of its own; pip expands
    # ${MERFISHFLOW_SOURCE}, which rules/common.smk sets to the workflow's folder.
    source_lines = [line for line in pip_lines if "${MERFISHFLOW_SOURCE}" in line]
    assert len(source_lines) == len([line for line in pip_lines if "$" in line or "/" in line or ".." in line])
    assert any(line.startswith("-e ") for line in source_lines)
    requirements = tmp_path / "elsewhere" / "condaenv.requirements.txt"
    requirements.parent.mkdir()
    requirements.write_text("\n".join(source_lines) + "\n")
    # pip names the folder it takes the package from before it builds anything (building needs setuptools>=77,
    # which conda's pip fetches and this test must not).
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                             "--no-build-isolation", "-r", str(requirements)], capture_output=True, text=True,
                            cwd=requirements.parent, env={**os.environ, "MERFISHFLOW_SOURCE": str(REPO)})
    assert f"Obtaining {REPO.as_uri()} (from -r {requirements}" in result.stdout, result.stdout + result.stderr


def test_common_smk_points_the_conda_env_at_the_workflow(monkeypatch):
    from merfishflow.workflow.pipeline import CONDA_SOURCE_VARIABLE, export_conda_source

    monkeypatch.delenv(CONDA_SOURCE_VARIABLE, raising=False)
    assert "export_conda_source(workflow.basedir)" in (REPO / "rules" / "common.smk").read_text()
    assert export_conda_source(REPO / "rules" / "..") == str(REPO) == os.environ[CONDA_SOURCE_VARIABLE]


def test_every_rule_has_a_description():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--list-rules"], cwd=REPO, capture_output=True,
                            text=True, env=snakemake_env())
    assert result.returncode == 0, result.stderr
    rules = [line for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    # Every rule the workflow defines is listed (the listing is not cut short).
    defined = {m for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
               for m in re.findall(r"^\s*rule (\w+):", path.read_text(), flags=re.M)}
    assert len(defined) >= 20 and {line.split(" ", 1)[0] for line in rules} == defined
    undocumented = [line for line in rules if not re.fullmatch(r"\w+ \(.+", line)]
    assert undocumented == []
    assert any(line.startswith("qc_report (") for line in rules)


def test_cli_version_and_plain_help():
    version = subprocess.run([sys.executable, "-m", "merfishflow.cli", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == f"merfishflow {__version__}"
    for args in ([], ["simulate"], ["validate"], ["status"]):
        text = subprocess.run([sys.executable, "-m", "merfishflow.cli", *args, "--help"], capture_output=True,
                              text=True).stdout
        assert "usage: merfishflow" in text
        assert not re.search(r"``|:(func|class|mod):", text), text


def test_license_is_bsd_3_clause():
    assert (REPO / "LICENSE").read_text().startswith("BSD 3-Clause License")
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "BSD-3-Clause"


@pytest.mark.workflow
def test_catalog_test_config_plans_the_whole_workflow_with_a_quiet_console(tmp_path):
    """``.test/config/config.yaml`` as the workflow catalog runs it, dry; no console line grows with the data."""
    workdir = tmp_path / "test"
    workdir.mkdir()
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2",
                             "--directory", str(workdir), "--configfile", str(REPO / ".test" / "config" /
                                                                            "config.yaml"), "-n"],
                            capture_output=True, text=True, env=snakemake_env(), cwd=REPO)
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-4000:]
    assert "qc_report" in console and "localrule all:" in console or "rule all:" in console
    assert "Shell command: None" not in console
    all_block = console[console.index("rule all:"):].split("\n\n")[0]
    assert len(all_block) < 1500, all_block
