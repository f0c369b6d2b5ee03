"""`bosh create-release` (the real bosh CLI) builds the release from a copy of the repository."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from release_helpers import ALL_JOBS, ALL_PACKAGES, CF_STANDIN_NAME

from devtools import peers


def _copy_release_dir(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    for name in ("config", "jobs", "packages", "src"):
        shutil.copytree(peers.REPO / name, dest / name, ignore=ignore, symlinks=True)
    shutil.copy2(peers.REPO / ".gitignore", dest / ".gitignore")


@pytest.fixture(scope="module")
def release(blobs_dir: Path, cf_cli_standin: Path, tmp_path_factory) -> tuple[Path, str]:
    bosh = str(peers.bosh())
    work = tmp_path_factory.mktemp("release")
    repo = work / "istio-routing"
    _copy_release_dir(repo)
    files = [p for p in sorted(blobs_dir.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    blobs = [(p, str(p.relative_to(blobs_dir))) for p in files]
    blobs.append((cf_cli_standin, f"cf-cli/{CF_STANDIN_NAME}"))
    for path, name in blobs:
        added = subprocess.run([bosh, "add-blob", str(path), name], cwd=repo, capture_output=True, text=True, timeout=120)
        assert added.returncode == 0, f"bosh add-blob {name}: {added.stdout}{added.stderr}"
    tarball = work / "release.tgz"
    created = subprocess.run([bosh, "create-release", "--force", f"--tarball={tarball}"], cwd=repo,
                             capture_output=True, text=True, timeout=300)
    assert created.returncode == 0, created.stdout + created.stderr
    return tarball, created.stdout


def test_release_holds_every_job_and_package(release):
    tarball, output = release
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        manifest = yaml.safe_load(tar.extractfile("release.MF").read())
    assert manifest["name"] == "istio-routing"
    assert ALL_JOBS == ["copilot", "istio-route-registrar", "istio-router", "istio-smoke-tests", "pilot-discovery"]
    assert sorted(j["name"] for j in manifest["jobs"]) == ALL_JOBS
    assert sorted(p["name"] for p in manifest["packages"]) == ALL_PACKAGES
    for job in ALL_JOBS:
        assert f"jobs/{job}.tgz" in names
    for package in ALL_PACKAGES:
        assert f"packages/{package}.tgz" in names
    assert "istio-routing" in output


def test_copilot_package_has_the_source_protos_and_no_bytecode(release, tmp_path):
    tarball, _ = release
    with tarfile.open(tarball) as tar:
        tar.extract("packages/copilot.tgz", tmp_path, filter="data")
    with tarfile.open(tmp_path / "packages" / "copilot.tgz") as package:
        files = set(package.getnames())
    assert "./packaging" in files and "./python-packaging/python-app.sh" in files
    assert {"./copilot/main.py", "./copilot/protos/bbs_pb2.py", "./copilot/xds/mcp_server.py"} <= files
    assert {"./daemon_kit/__init__.py", "./daemon_kit/cli.py", "./daemon_kit/config.py", "./daemon_kit/logs.py"} <= files
    assert any(f.startswith("./python-wheels/grpcio-") for f in files)
    assert any(f.startswith("./python/python-") for f in files)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)


def test_router_job_carries_its_templates(release, tmp_path):
    tarball, _ = release
    with tarfile.open(tarball) as tar:
        tar.extract("jobs/istio-router.tgz", tmp_path, filter="data")
    with tarfile.open(tmp_path / "jobs" / "istio-router.tgz") as job:
        files = set(job.getnames())
        manifest = yaml.safe_load(job.extractfile("./job.MF").read())
    assert {"./monit", "./templates/envoy.json.erb", "./templates/bpm.yml.erb", "./templates/drain.erb"} <= files
    assert manifest["packages"] == ["envoy", "router-sds"]
    assert {c["name"] for c in manifest["consumes"]} == {"pilot", "copilot"}


@pytest.mark.parametrize(("package", "entry"), [
    ("copilot", "copilot/main.py"), ("istio-route-registrar", "route_registrar/__main__.py"),
    ("router-sds", "router_sds/__main__.py"), ("router-sds", "route_services/__main__.py"),
])
def test_python_packages_carry_the_daemon_kit(release, tmp_path, package, entry):
    """Every Python daemon starts from daemon_kit (its main(), config reader and logs): the package holds it."""
    tarball, _ = release
    with tarfile.open(tarball) as tar:
        tar.extract(f"packages/{package}.tgz", tmp_path, filter="data")
    with tarfile.open(tmp_path / "packages" / f"{package}.tgz") as archive:
        files = set(archive.getnames())
        packaging = archive.extractfile("./packaging").read().decode()
    kit = {f"./daemon_kit/{name}.py" for name in ("__init__", "cli", "config", "logs", "httpd")}
    assert kit <= files and f"./{entry}" in files
    assert "install_source daemon_kit" in packaging
