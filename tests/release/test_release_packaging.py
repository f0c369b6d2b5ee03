"""Each packaging script, run like BOSH runs it (cwd = the package's files, writing only to
BOSH_INSTALL_TARGET), produces something that runs; a missing blob fails clearly."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from release_helpers import ALL_PACKAGES, CF_STANDIN_NAME, PACKAGES, copilot_properties, load_spec, render

from devtools.peers import REPO

SRC = REPO / "src"
BLOB_PACKAGES = {"copilot", "router-sds", "envoy", "pilot-discovery", "cf-cli", "istio-route-registrar"}


def package_dir(name: str, blobs: Path, out: Path, *, without_blobs: bool = False) -> Path:
    """The package's files as BOSH lays them out for compilation: every `files` glob matched in src/
    and blobs/, minus `excluded_files` (large blobs are linked, not copied)."""
    spec = load_spec("package", name)
    excluded: set[str] = set()
    for pattern in spec.get("excluded_files") or []:
        excluded |= {str(Path(p).relative_to(SRC)) for p in glob.glob(str(SRC / pattern), recursive=True)}
    out.mkdir(parents=True)
    for pattern in spec["files"]:
        roots = [SRC] if without_blobs else [SRC, blobs]
        for root in roots:
            for match in glob.glob(str(root / pattern), recursive=True):
                path = Path(match)
                relative = str(path.relative_to(root))
                if not path.is_file() or relative in excluded or "__pycache__" in relative:
                    continue
                target = out / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if root == blobs:
                    target.symlink_to(path.resolve())
                else:
                    shutil.copy2(path, target)
    return out


def run_packaging(name: str, workdir: Path, target: Path) -> subprocess.CompletedProcess:
    target.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(workdir), "BOSH_INSTALL_TARGET": str(target)}
    return subprocess.run(["bash", str(PACKAGES / name / "packaging")], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def all_blobs(blobs_dir: Path, cf_cli_standin: Path, tmp_path_factory) -> Path:
    """The release's blobs plus the cf CLI stand-in, in one blob tree."""
    tree = tmp_path_factory.mktemp("blobs")
    for item in blobs_dir.iterdir():
        (tree / item.name).symlink_to(item)
    (tree / "cf-cli").mkdir()
    (tree / "cf-cli" / CF_STANDIN_NAME).symlink_to(cf_cli_standin)
    return tree


def test_every_package_is_covered():
    assert set(ALL_PACKAGES) == BLOB_PACKAGES | {"istio-smoke-tests"}
    for name in ALL_PACKAGES:
        assert os.access(PACKAGES / name / "packaging", os.X_OK), f"{name}/packaging is not executable"


def _runs(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def _package_python(target: Path, code: str) -> str:
    """Run code with the package's own Python runtime (isolated from this test's interpreter)."""
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(target / "python" / "lib")}
    result = subprocess.run([str(target / "python" / "bin" / "python3"), "-I", "-c", code], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", sorted(BLOB_PACKAGES | {"istio-smoke-tests"}))
def test_packaging_produces_a_working_package(name, all_blobs, tmp_path, pki):
    work = package_dir(name, all_blobs, tmp_path / "compile")
    target = tmp_path / "install"
    result = run_packaging(name, work, target)
    assert result.returncode == 0, result.stdout + result.stderr
    if name == "copilot":
        assert "usage: copilot" in _runs([str(target / "bin" / "copilot"), "--help"])
        rendered = render("copilot", copilot_properties(pki), tmp_path / "job")
        for path in rendered.values():
            path.write_text(path.read_text().replace("/var/vcap/jobs/copilot", str(tmp_path / "job")))
        assert "config ok" in _runs([str(target / "bin" / "copilot"), "--config", str(rendered["config/copilot.yml"]), "--check"])
        assert str(target) in _package_python(target, "import copilot.main, grpc, yaml; print(copilot.__file__)")
    elif name == "router-sds":
        assert "usage: router-sds" in _runs([str(target / "bin" / "router-sds"), "--help"])
        assert str(target) in _package_python(target, "import router_sds.server, yaml; print(router_sds.__file__)")
        assert "usage: route-services" in _runs([str(target / "bin" / "route-services"), "--help"])
        code = "import route_services.proxy, cryptography; print(route_services.__file__)"  # AES-GCM from the wheel
        assert str(target) in _package_python(target, code)
    elif name == "istio-route-registrar":
        assert "usage: istio-route-registrar" in _runs([str(target / "bin" / "istio-route-registrar"), "--help"])
        assert str(target) in _package_python(target, "import route_registrar.registrar; print(route_registrar.__file__)")
    elif name == "envoy":
        assert "version:" in _runs([str(target / "bin" / "envoy"), "--version"])
    elif name == "pilot-discovery":
        assert _runs([str(target / "bin" / "pilot-discovery"), "version"]).strip()
    elif name == "cf-cli":
        assert "cf version" in _runs([str(target / "bin" / "cf"), "version"])
    else:
        assert (target / "app" / "index.html").is_file() and (target / "app" / "Staticfile").is_file()
    if name in ("copilot", "router-sds", "istio-route-registrar"):  # the daemons' shared kit, installed beside them
        assert str(target) in _package_python(target, "import daemon_kit.cli; print(daemon_kit.__file__)")
    # Packaging wrote nothing outside BOSH_INSTALL_TARGET but its own compile dir.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compile", "install"] + (["job"] if name == "copilot" else [])


@pytest.mark.parametrize("name", sorted(BLOB_PACKAGES))
def test_missing_blob_fails_clearly(name, tmp_path):
    work = package_dir(name, tmp_path / "no-blobs", tmp_path / "compile", without_blobs=True)
    result = run_packaging(name, work, tmp_path / "install")
    assert result.returncode != 0
    assert "packaging error: missing blob" in result.stderr, result.stderr
    assert "scripts/add-blobs" in result.stderr
