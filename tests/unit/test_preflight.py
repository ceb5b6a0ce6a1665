"""scripts/preflight.py against simulated systems: a bare one stops make with one line naming what is missing and
the install command; a complete one lets make go on without a word. And the Makefile runs it first."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_system_deps import EM_AARCH64, ROOT, build_elf, preflight, write

SCRIPT = ROOT / "scripts" / "preflight.py"
SUDO = "" if os.geteuid() == 0 else "sudo "
LINUX = pytest.mark.skipif(sys.platform != "linux", reason="the simulated systems are Linux ones")


def interpreter_elf() -> dict[str, object]:
    """build_elf() arguments for a library the interpreter running the preflight could load."""
    wide, little, machine = preflight().elf_machine(os.path.realpath(sys.executable))
    return {"wide": wide == 2, "little": little == 1, "machine": machine}


def make_root(tmp_path: Path, os_release: str = "ID=debian\n", libgomp: bool = False) -> Path:
    """A filesystem root as bare as a slim image: os-release, ld.so.conf including a folder of its own."""
    root = tmp_path / "root"
    write(root / "etc" / "os-release", os_release.encode())
    write(root / "etc" / "ld.so.conf", b"include /etc/ld.so.conf.d/*.conf\n")
    write(root / "etc" / "ld.so.conf.d" / "local.conf", b"# added by an admin\n/opt/extra/lib\n")
    (root / "usr" / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    if libgomp:
        add_library(root, "usr/lib/x86_64-linux-gnu", "libgomp.so.1")
    return root


def add_library(root: Path, folder: str, soname: str, **elf: object) -> Path:
    return write(root / folder / soname, build_elf([], soname=soname, **{**interpreter_elf(), **elf}))


def make_venv(tmp_path: Path, needed: list[str]) -> Path:
    """A virtualenv whose only wheel is a LightGBM-like library linking `needed`."""
    venv = tmp_path / "venv"
    write(venv / "bin" / "python", b"")
    site = venv / "lib" / "python3.11" / "site-packages"
    write(site / "lightgbm" / "lib" / "lib_lightgbm.so", build_elf(needed, **interpreter_elf()))
    return venv


def run(root: Path, venv: Path) -> tuple[int, list[str]]:
    """The preflight as make runs it; (exit status, every line it printed on stdout or stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "CARAVAN_PREFLIGHT_ROOT")}
    result = subprocess.run([sys.executable, str(SCRIPT), "--venv", str(venv), "--root", str(root)],
                            capture_output=True, text=True, env=env, timeout=60)
    return result.returncode, (result.stdout + result.stderr).splitlines()


GOMP_MISSING = "preflight: libgomp.so.1 is missing (the OpenMP runtime of LightGBM"


# -- before the virtualenv exists: the known libraries -----------------------------------------------------


@LINUX
def test_a_system_without_libgomp_stops_with_one_line_and_the_install_command(tmp_path):
    status, lines = run(make_root(tmp_path), tmp_path / "no-venv-yet")
    assert status == 1
    assert lines == [f"{GOMP_MISSING}); install it with: {SUDO}apt-get install libgomp1"]


@LINUX
def test_a_system_with_libgomp_passes_silently(tmp_path):
    assert run(make_root(tmp_path, libgomp=True), tmp_path / "no-venv-yet") == (0, [])


@LINUX
def test_the_readmes_example_is_what_a_user_without_libgomp_sees(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    (line,) = preflight().check_libraries("debian", str(make_root(tmp_path)), {})
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"`preflight: {line}`" in readme


@LINUX
@pytest.mark.parametrize(("os_release", "fix"), [
    ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', f"install it with: {SUDO}apt-get install libgomp1"),
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', f"install it with: {SUDO}dnf install libgomp"),
    ("ID=fedora\n", f"install it with: {SUDO}dnf install libgomp"),
    ("ID=arch\n", "install the package that provides libgomp.so.1 (Debian/Ubuntu: libgomp1, Fedora/RHEL: libgomp, "
                  "macOS: libomp)"),
])
def test_the_install_command_is_the_detected_platforms(tmp_path, os_release, fix):
    status, lines = run(make_root(tmp_path, os_release), tmp_path / "no-venv-yet")
    assert (status, lines) == (1, [f"{GOMP_MISSING}); {fix}"])


@LINUX
def test_a_library_built_for_another_machine_does_not_count(tmp_path):
    root = make_root(tmp_path)
    foreign = EM_AARCH64 if interpreter_elf()["machine"] != EM_AARCH64 else 62
    add_library(root, "usr/lib/x86_64-linux-gnu", "libgomp.so.1", machine=foreign)
    assert run(root, tmp_path / "no-venv-yet")[0] == 1
    add_library(root, "opt/extra/lib", "libgomp.so.1")  # the folder ld.so.conf.d/local.conf adds
    assert run(root, tmp_path / "no-venv-yet") == (0, [])


# -- after the install: what the installed wheels link ----------------------------------------------------


@LINUX
def test_the_installed_wheels_needs_are_checked_and_a_library_removed_later_is_caught(tmp_path):
    root = make_root(tmp_path, libgomp=True)
    venv = make_venv(tmp_path, ["libc.so.6", "libgomp.so.1", "libextra.so.7"])
    status, lines = run(root, venv)
    assert status == 1
    assert lines == ["preflight: libextra.so.7 is missing (needed by lightgbm/lib/lib_lightgbm.so); no package is "
                     "known for it: install the one that provides it (and add it to scripts/preflight.py)"]
    add_library(root, "opt/extra/lib", "libextra.so.7")
    assert run(root, venv) == (0, [])
    assert (venv / ".preflight.json").is_file(), "the scan is remembered in the virtualenv"
    # The scan is cached, the libraries are not: removing one after the virtualenv was built is caught.
    (root / "usr" / "lib" / "x86_64-linux-gnu" / "libgomp.so.1").unlink()
    status, lines = run(root, venv)
    assert (status, lines) == (1, [f"{GOMP_MISSING}, needed by lightgbm/lib/lib_lightgbm.so); install it with: "
                                   f"{SUDO}apt-get install libgomp1"])


@LINUX
def test_a_new_install_in_site_packages_is_scanned_again(tmp_path):
    root = make_root(tmp_path, libgomp=True)
    venv = make_venv(tmp_path, ["libgomp.so.1"])
    assert run(root, venv) == (0, [])
    site = venv / "lib" / "python3.11" / "site-packages"
    write(site / "newpkg" / "_ext.so", build_elf(["libnew.so.2"], **interpreter_elf()))
    os.utime(site, ns=(site.stat().st_atime_ns, site.stat().st_mtime_ns + 1_000_000))  # as pip's install does
    status, lines = run(root, venv)
    assert status == 1 and len(lines) == 1 and lines[0].startswith("preflight: libnew.so.2 is missing (needed by "
                                                                   "newpkg/_ext.so)")


# -- the checks one by one -------------------------------------------------------------------------------


def test_python_requires_is_read_from_setup_cfg_and_an_older_python_is_one_line(tmp_path):
    assert preflight().python_requires() == (3, 10)
    assert preflight().check_python((3, 11, 7, "final", 0), (3, 10)) == []
    assert preflight().check_python((3, 10, 0), (3, 10)) == []
    (line,) = preflight().check_python((3, 9, 18, "final", 0), (3, 10))
    assert line.startswith("Python 3.9.18 (") and "older than 3.10 (setup.cfg python_requires)" in line
    cfg = write(tmp_path / "setup.cfg", b"[options]\npython_requires = ~=3.10\n")
    with pytest.raises(ValueError, match=re.escape("python_requires '~=3.10' is not of the form >=X.Y")):
        preflight().python_requires(str(cfg))


@pytest.mark.parametrize(("platform", "system_python", "fix"), [
    ("debian", True, "install it with: sudo apt-get install python3-venv"),
    ("debian", False, "use a Python that includes them"),
    ("fedora", True, "use a Python that includes them"),
])
def test_a_python_without_ensurepip_is_one_line(monkeypatch, platform, system_python, fix):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    (line,) = preflight().check_venv(platform, has_module=lambda name: name != "ensurepip",
                                     system_python=system_python)
    assert "has no ensurepip, so it cannot create the virtualenv; " + fix in line
    assert preflight().check_venv(platform, has_module=lambda name: True) == []


@pytest.mark.parametrize(("os_release", "sysname", "platform"), [
    ("ID=debian\n", "Linux", "debian"), ("ID=ubuntu\nID_LIKE=debian\n", "Linux", "debian"),
    ('ID="almalinux"\nID_LIKE="rhel centos fedora"\n', "Linux", "fedora"), ('ID="rhel"\n', "Linux", "fedora"),
    ("ID=alpine\n", "Linux", "unknown"), (None, "Linux", "unknown"), (None, "Darwin", "darwin"),
])
def test_the_platform_comes_from_uname_and_os_release(tmp_path, os_release, sysname, platform):
    if os_release is not None:
        write(tmp_path / "etc" / "os-release", os_release.encode())
    assert preflight().detect_platform(str(tmp_path), sysname) == platform


def test_sudo_only_where_it_is_needed():
    assert preflight().install_command("debian", ["libgomp1"], as_root=False) == "sudo apt-get install libgomp1"
    assert preflight().install_command("fedora", ["libgomp"], as_root=True) == "dnf install libgomp"
    assert preflight().install_command("darwin", ["libomp"], as_root=False) == "brew install libomp"
    assert preflight().install_command("unknown", ["libgomp1"]) is None


def test_on_macos_the_homebrew_formula_is_looked_for(tmp_path, monkeypatch):
    monkeypatch.delenv("HOMEBREW_PREFIX", raising=False)
    assert preflight().check_libraries("darwin", str(tmp_path), {}) == [
        "libomp.dylib is missing (the OpenMP runtime of LightGBM); install it with: brew install libomp"]
    write(tmp_path / "opt" / "homebrew" / "opt" / "libomp" / "lib" / "libomp.dylib", b"")
    assert preflight().check_libraries("darwin", str(tmp_path), {}) == []


def test_an_old_python_can_parse_the_script_to_say_it_is_too_old():
    ast.parse(SCRIPT.read_text(), feature_version=(3, 7))


# -- make runs it first, and quietly ---------------------------------------------------------------------


def make(*args: str) -> subprocess.CompletedProcess[str]:
    # A make inside make (pytest run by `make test`) would print "Entering directory" lines.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PYTHON", "VENV")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=60)


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is a prerequisite of the project")


@needs_make
@pytest.mark.parametrize("target", ["demo", "test", "unit"])
def test_make_runs_the_preflight_before_building_and_after_each_install(tmp_path, target):
    venv = tmp_path / ".venv"
    result = make("-n", target, f"VENV={venv}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    check = f"python3 scripts/preflight.py --venv {venv}"
    assert lines[0] == check, "the preflight comes before anything is built"
    assert lines[1] == f"python3 -m venv {venv}"
    installs = [i for i, line in enumerate(lines) if " -m pip install" in line and "--upgrade pip" not in line]
    assert installs and all(lines[i + 2] == check for i in installs), "checked again once the wheels are in"


@needs_make
def test_a_built_virtualenv_costs_one_preflight_and_make_says_nothing_when_all_is_well(tmp_path):
    venv = tmp_path / ".venv"
    for stamp in (".runtime", ".test"):
        write(venv / stamp, b"")  # newer than setup.cfg and pyproject.toml
    lines = make("-n", "demo", f"VENV={venv}").stdout.splitlines()
    assert lines == [f"python3 scripts/preflight.py --venv {venv}", f"{venv}/bin/python -m pipelines.demo"]
    quiet = make("preflight", f"VENV={venv}")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
