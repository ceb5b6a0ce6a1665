#!/usr/bin/env python3
"""Checks that this machine can build and run caravan's virtualenv, before `make` spends minutes on it.

`make demo`, `make test` and every target that needs the virtualenv run it first (silent when all is well):

- the Python that builds the virtualenv satisfies setup.cfg's python_requires;
- it can create a virtualenv (`venv` and `ensurepip`; Debian and Ubuntu ship ensurepip in python3-venv);
- every shared library the installed wheels need from the system is there. Before the virtualenv exists
  only the known ones can be checked (SYSTEM_LIBRARIES); once it does, the ELF `NEEDED` entries of every
  shared object in its site-packages are read (the scan is cached in the virtualenv until site-packages
  changes; looking the libraries up again is a few stat calls, so a library removed later is still caught).

Each problem is one line naming what is missing and the install command for this platform; exit status 1.
tests/unit/test_system_deps.py derives the libraries from the installed wheels and fails when one is
missing from SYSTEM_LIBRARIES or from the README's prerequisites.

Runs with the system Python before any virtualenv exists: standard library only, and syntax an old Python
still parses, so that a too-old Python gets the one line instead of a SyntaxError.
"""

from __future__ import annotations

import argparse
import configparser
import glob
import hashlib
import importlib.util
import json
import os
import re
import struct
import sys
import sysconfig
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.dirname(HERE)
CACHE_NAME = ".preflight.json"


class Library(NamedTuple):
    """A library some installed wheel links against without vendoring it, and where each platform gets it."""

    soname: str  # the NEEDED name on Linux
    what: str
    apt: str  # Debian/Ubuntu package
    dnf: str  # Fedora/RHEL package
    brew: str  # Homebrew formula (macOS)
    dylib: str  # the file the formula installs under $(brew --prefix <formula>)/lib


# One row per library; tests/unit/test_system_deps.py proves this table equals what the wheels need.
SYSTEM_LIBRARIES = (
    # LightGBM's wheels link the OpenMP runtime without vendoring it (lightgbm-org/LightGBM#7141).
    Library("libgomp.so.1", "the OpenMP runtime of LightGBM", apt="libgomp1", dnf="libgomp", brew="libomp",
            dylib="libomp.dylib"),
)

# What a manylinux wheel may take from any system (auditwheel's manylinux-policy.json, lib_whitelist), as far as
# a bare Debian or Fedora install has it: the glibc family, the GCC runtime (libgcc_s, libstdc++), and zlib,
# which dpkg and rpm themselves need and without which pip could not unpack a wheel. The whitelist's X11, GL
# and GLib libraries are deliberately not here: slim images lack them.
MANYLINUX_BASE = frozenset({
    "libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libutil.so.1", "libcrypt.so.1",
    "libresolv.so.2", "libnsl.so.1", "libanl.so.1", "libgcc_s.so.1", "libstdc++.so.6", "libz.so.1",
})
MANYLINUX_BASE_PREFIXES = ("ld-linux", "ld64.so", "linux-vdso", "linux-gate")

# How a platform installs packages. macOS needs no sudo for Homebrew.
INSTALLERS = {"debian": "apt-get install", "fedora": "dnf install", "darwin": "brew install"}
VENV_PACKAGES = {"debian": "python3-venv"}  # Fedora's and Homebrew's Python include ensurepip
PLATFORM_NAMES = {"debian": "Debian/Ubuntu", "fedora": "Fedora/RHEL", "darwin": "macOS"}


# -- the platform ----------------------------------------------------------------------------------------


def detect_platform(root: str = "/", sysname: str | None = None) -> str:
    """debian, fedora, darwin or unknown: from uname, then {root}/etc/os-release's ID and ID_LIKE."""
    if (sysname or os.uname().sysname) == "Darwin":
        return "darwin"
    fields: dict[str, str] = {}
    for name in ("etc/os-release", "usr/lib/os-release"):
        try:
            with open(os.path.join(root, name), encoding="utf-8") as f:
                for line in f:
                    key, sep, value = line.strip().partition("=")
                    if sep:
                        fields[key] = value.strip().strip("\"'")
            break
        except OSError:
            continue
    ids = [fields.get("ID", ""), *fields.get("ID_LIKE", "").split()]
    for family, members in (("debian", {"debian", "ubuntu"}), ("fedora", {"fedora", "rhel", "centos"})):
        if members & set(ids):
            return family
    return "unknown"


def install_command(platform: str, packages: list[str], as_root: bool | None = None) -> str | None:
    """The exact command that installs `packages` here, or None on a platform this script does not know."""
    if platform not in INSTALLERS:
        return None
    as_root = os.geteuid() == 0 if as_root is None else as_root
    sudo = "" if as_root or platform == "darwin" else "sudo "
    return f"{sudo}{INSTALLERS[platform]} {' '.join(packages)}"


def how_to_install(platform: str, library: Library | None, soname: str) -> str:
    """The end of a problem line: the command for this platform, or what to look for elsewhere."""
    if library is None:
        return "no package is known for it: install the one that provides it (and add it to scripts/preflight.py)"
    packages = {"debian": library.apt, "fedora": library.dnf, "darwin": library.brew}
    command = install_command(platform, [packages[platform]]) if platform in packages else None
    if command:
        return f"install it with: {command}"
    known = ", ".join(f"{PLATFORM_NAMES[p]}: {packages[p]}" for p in ("debian", "fedora", "darwin"))
    return f"install the package that provides {soname} ({known})"


# -- ELF: the NEEDED entries of a shared object (program headers and dynamic segment only) ----------------

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29


class ElfError(Exception):
    """An ELF file whose dynamic section cannot be read."""


class Dynamic(NamedTuple):
    """What the dynamic loader reads from a shared object."""

    machine: tuple[int, int, int]  # (class, byte order, e_machine): a library must match its user's
    needed: list[str]
    soname: str | None
    runpath: list[str]  # DT_RUNPATH, or DT_RPATH when there is no RUNPATH


def elf_machine(path: str) -> tuple[int, int, int] | None:
    """(class, byte order, e_machine) of an ELF file, or None when it is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    order = "<" if head[5] == 1 else ">"
    return head[4], head[5], struct.unpack(order + "H", head[18:20])[0]


def read_dynamic(path: str) -> Dynamic | None:
    """The dynamic section of an ELF file; None when the file is not ELF. Raises ElfError when it is
    ELF but cut short or inconsistent."""
    machine = elf_machine(path)
    if machine is None:
        return None
    wide, order = machine[0] == 2, "<" if machine[1] == 1 else ">"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size

            def read(offset: int, length: int) -> bytes:
                # Bounds first: a corrupt header must not make us allocate what it claims.
                if offset < 0 or length < 0 or offset + length > size:
                    raise ElfError(f"{length} bytes at {offset} lie beyond the end of the file ({size} bytes)")
                f.seek(offset)
                return f.read(length)

            data = read(0, 64 if wide else 52)
            if wide:
                phoff, phentsize, phnum = (struct.unpack(order + "Q", data[32:40])[0],
                                           *struct.unpack(order + "HH", data[54:58]))
            else:
                phoff, phentsize, phnum = (struct.unpack(order + "I", data[28:32])[0],
                                           *struct.unpack(order + "HH", data[42:46]))
            if phnum == 0:
                return Dynamic(machine, [], None, [])  # no program headers (an object file): loads nothing
            if phentsize < (56 if wide else 32):
                raise ElfError(f"program header entries of {phentsize} bytes")
            table = read(phoff, phentsize * phnum)
            loads, dynamic = [], None
            for i in range(phnum):
                entry = table[i * phentsize:(i + 1) * phentsize]
                if wide:
                    p_type, _, offset, vaddr, _, filesz = struct.unpack(order + "IIQQQQ", entry[:40])
                else:
                    p_type, offset, vaddr, _, filesz = struct.unpack(order + "IIIII", entry[:20])
                if p_type == PT_LOAD:
                    loads.append((vaddr, offset, filesz))
                elif p_type == PT_DYNAMIC:
                    dynamic = (offset, filesz)
            if dynamic is None:
                return Dynamic(machine, [], None, [])  # static: needs nothing
            raw = read(*dynamic)
            step = 16 if wide else 8
            entries = [struct.unpack(order + ("qQ" if wide else "iI"), raw[i:i + step])
                       for i in range(0, len(raw) - step + 1, step)]
            tags: dict[int, list[int]] = {}
            for tag, value in entries:
                if tag == DT_NULL:
                    break
                tags.setdefault(tag, []).append(value)
            if DT_STRTAB not in tags:
                raise ElfError("no string table")
            strtab_addr, strsz = tags[DT_STRTAB][0], tags.get(DT_STRSZ, [0])[0]
            homes = [offset + strtab_addr - vaddr for vaddr, offset, filesz in loads
                     if vaddr <= strtab_addr < vaddr + filesz]
            if not homes:
                raise ElfError("the string table lies in no loaded segment")
            strings = read(homes[0], strsz)
    except (OSError, struct.error) as exc:
        raise ElfError(str(exc)) from exc

    def string(offset: int) -> str:
        end = strings.find(b"\0", offset)
        if offset >= len(strings) or end < 0:
            raise ElfError(f"string offset {offset} outside the string table")
        return strings[offset:end].decode("utf-8", "surrogateescape")

    paths = tags.get(DT_RUNPATH) or tags.get(DT_RPATH) or []
    return Dynamic(machine, [string(v) for v in tags.get(DT_NEEDED, [])],
                   string(tags[DT_SONAME][0]) if DT_SONAME in tags else None,
                   [p for v in paths for p in string(v).split(":") if p])


# -- the installed wheels: which libraries they need from the system --------------------------------------


def is_manylinux_base(soname: str) -> bool:
    """Whether any manylinux system has this library (so no wheel needs to vendor it)."""
    return soname in MANYLINUX_BASE or soname.startswith(MANYLINUX_BASE_PREFIXES)


def looks_shared(name: str) -> bool:
    return name.endswith(".so") or ".so." in name


def site_packages(venv: str) -> list[str]:
    """The site-packages folders of a virtualenv (none when it has not been built)."""
    return sorted(glob.glob(os.path.join(venv, "lib", "python3*", "site-packages")))


def scan(site_dirs: list[str]) -> tuple[dict[str, str], list[str]]:
    """(soname -> the first object that needs it, problems): what the shared objects under `site_dirs` need
    from the system. Dropped: the manylinux base, and libraries vendored in the wheels, that is found
    beside the object, in its RUNPATH/RPATH under $ORIGIN, anywhere in its own top-level package, or in
    a `*.libs` folder (where auditwheel puts the libraries it vendors)."""
    needs: dict[str, str] = {}
    problems: list[str] = []
    for site in site_dirs:
        objects: list[tuple[str, str, Dynamic]] = []
        provided: dict[str, set[str]] = {}  # top-level entry -> file names and SONAMEs of its objects
        for folder, dirs, files in os.walk(site):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not looks_shared(name):
                    continue
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, site)
                try:
                    dynamic = read_dynamic(path)
                except ElfError as exc:
                    problems.append(f"cannot read {relative}: {exc}")
                    continue
                if dynamic is None:
                    continue
                top = relative.split(os.sep)[0]  # a package folder, a *.libs folder, or a module at the top
                provided.setdefault(top, set()).update([name] + ([dynamic.soname] if dynamic.soname else []))
                objects.append((path, top, dynamic))
        libs_folders = set().union(*(names for top, names in provided.items() if top.endswith(".libs")))
        for path, top, dynamic in objects:
            origin = os.path.dirname(path)
            search = [origin] + [os.path.normpath(p.replace("${ORIGIN}", origin).replace("$ORIGIN", origin))
                                 for p in dynamic.runpath if "ORIGIN" in p]
            for soname in dynamic.needed:
                if (is_manylinux_base(soname) or soname in provided[top] or soname in libs_folders
                        or any(os.path.exists(os.path.join(d, soname)) for d in search)):
                    continue
                needs.setdefault(soname, os.path.relpath(path, site))
    return needs, problems


def cached_scan(venv: str, site_dirs: list[str]) -> tuple[dict[str, str], list[str]]:
    """scan(), remembered in the virtualenv until site-packages or this script changes (pip touches
    site-packages on every install, upgrade or removal)."""
    with open(os.path.abspath(__file__), "rb") as f:
        key = [hashlib.sha256(f.read()).hexdigest()] + [f"{d}:{os.stat(d).st_mtime_ns}" for d in site_dirs]
    cache = os.path.join(venv, CACHE_NAME)
    try:
        with open(cache, encoding="utf-8") as f:
            stored = json.load(f)
        if stored["key"] == key:
            return dict(stored["needs"]), list(stored["problems"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    needs, problems = scan(site_dirs)
    try:
        with open(cache + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"key": key, "needs": needs, "problems": problems}, f)
        os.replace(cache + ".tmp", cache)
    except OSError:
        pass  # a read-only virtualenv: scan again next time
    return needs, problems


# -- finding a library the way the dynamic loader would ---------------------------------------------------


def ld_so_conf_dirs(root: str, conf: str = "etc/ld.so.conf", seen: set[str] | None = None) -> list[str]:
    """The folders {root}/etc/ld.so.conf lists, following `include` lines (what ldconfig caches)."""
    seen = set() if seen is None else seen
    path = os.path.join(root, conf.lstrip("/"))
    if path in seen:
        return []
    seen.add(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    dirs: list[str] = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line.startswith("include"):
            for pattern in line.split()[1:]:
                pattern = pattern if pattern.startswith("/") else os.path.join(os.path.dirname("/" + conf), pattern)
                for match in sorted(glob.glob(os.path.join(root, pattern.lstrip("/")))):
                    dirs += ld_so_conf_dirs(root, os.path.relpath(match, root), seen)
        elif line and not line.startswith("hwcap"):
            dirs += [d for d in re.split(r"[\s,:]+", line) if d]
    return dirs


def search_dirs(root: str) -> list[str]:
    """Where the dynamic loader looks, under `root`: LD_LIBRARY_PATH (for the real root only), the folders of
    ld.so.conf, then the default ones (with the multiarch triplet Debian uses)."""
    triplets = {t for t in (sysconfig.get_config_var("MULTIARCH"), f"{os.uname().machine}-linux-gnu") if t}
    defaults = [f"{prefix}/{t}" for prefix in ("/lib", "/usr/lib") for t in sorted(triplets)]
    defaults += ["/lib64", "/usr/lib64", "/lib", "/usr/lib"]
    dirs = ld_so_conf_dirs(root) + defaults
    inside = [os.path.join(root, d.lstrip("/")) for d in dirs]
    if os.path.abspath(root) == "/":
        inside = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d] + inside
    return list(dict.fromkeys(inside))


def find_library(soname: str, dirs: list[str], machine: tuple[int, int, int] | None) -> str | None:
    """The first file named `soname` in `dirs` built for `machine` (any ELF when machine is None)."""
    for folder in dirs:
        path = os.path.join(folder, soname)
        found = elf_machine(path)
        if found is not None and (machine is None or found == machine):
            return path
    return None


def find_dylib(library: Library, root: str) -> str | None:
    """The Homebrew formula's library on macOS (Apple Silicon and Intel prefixes)."""
    prefixes = [os.environ.get("HOMEBREW_PREFIX", ""), "/opt/homebrew", "/usr/local"]
    for prefix in [p for p in prefixes if p]:
        path = os.path.join(root, prefix.lstrip("/"), "opt", library.brew, "lib", library.dylib)
        if os.path.exists(path):
            return path
    return None


# -- the checks ------------------------------------------------------------------------------------------


def python_requires(setup_cfg: str = os.path.join(PROJECT, "setup.cfg")) -> tuple[int, ...]:
    """The lowest Python setup.cfg accepts (its python_requires must read `>=X.Y`)."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg, encoding="utf-8")
    spec = cfg.get("options", "python_requires", fallback="").strip()
    match = re.fullmatch(r">=\s*(\d+(?:\.\d+)*)", spec)
    if not match:
        raise ValueError(f"{setup_cfg}: python_requires {spec!r} is not of the form >=X.Y")
    return tuple(int(part) for part in match.group(1).split("."))


def check_python(version: tuple[int, ...], lowest: tuple[int, ...]) -> list[str]:
    """A line when the Python running this is older than setup.cfg allows."""
    if tuple(version[:len(lowest)]) >= lowest:
        return []
    want, have = ".".join(map(str, lowest)), ".".join(map(str, version[:3]))
    return [f"Python {have} ({sys.executable}) is older than {want} (setup.cfg python_requires); "
            f"run make with PYTHON=<a python{want} or newer>"]


def check_venv(platform: str, has_module=lambda name: importlib.util.find_spec(name) is not None,
               system_python: bool | None = None) -> list[str]:
    """A line when this Python cannot create a virtualenv (Debian and Ubuntu ship ensurepip separately)."""
    missing = [name for name in ("venv", "ensurepip") if not has_module(name)]
    if not missing:
        return []
    system_python = sys.prefix == "/usr" if system_python is None else system_python
    command = install_command(platform, [VENV_PACKAGES[platform]]) if platform in VENV_PACKAGES else None
    fix = (f"install it with: {command}" if command and system_python
           else "use a Python that includes them (python.org, pyenv, Homebrew) with PYTHON=...")
    return [f"Python {sys.executable} has no {' and no '.join(missing)}, so it cannot create the virtualenv; {fix}"]


def check_libraries(platform: str, root: str, needs: dict[str, str]) -> list[str]:
    """A line for each library that is needed (the known ones, and `needs`: soname -> who needs it) and missing."""
    known = {library.soname: library for library in SYSTEM_LIBRARIES}
    problems = []
    if platform == "darwin":  # Mach-O is not scanned: the known libraries only
        for library in SYSTEM_LIBRARIES:
            if find_dylib(library, root) is None:
                problems.append(f"{library.dylib} is missing ({library.what}); "
                                f"{how_to_install(platform, library, library.dylib)}")
        return problems
    dirs = search_dirs(root)
    machine = elf_machine(os.path.realpath(sys.executable))
    for soname in list(dict.fromkeys(list(known) + sorted(needs))):
        if find_library(soname, dirs, machine) is not None:
            continue
        library = known.get(soname)
        why = [library.what] if library else []
        why += [f"needed by {needs[soname]}"] if soname in needs else []
        problems.append(f"{soname} is missing ({', '.join(why)}); {how_to_install(platform, library, soname)}")
    return problems


def preflight(venv: str, root: str = "/") -> list[str]:
    """Every problem found, one line each (empty: make may go on)."""
    platform = detect_platform(root)
    try:
        problems = check_python(tuple(sys.version_info), python_requires())
    except ValueError as exc:
        problems = [str(exc)]
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        problems += check_venv(platform)
    needs: dict[str, str] = {}
    site_dirs = site_packages(venv)
    if site_dirs and platform != "darwin":
        needs, unreadable = cached_scan(venv, site_dirs)
        problems += unreadable
    return problems + check_libraries(platform, root, needs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", default=".venv", help="the virtualenv make builds (default: .venv)")
    parser.add_argument("--root", default=os.environ.get("CARAVAN_PREFLIGHT_ROOT", "/"),
                        help="the filesystem root to look for libraries and /etc/os-release in (tests simulate "
                             "a bare system with it; default: / or $CARAVAN_PREFLIGHT_ROOT)")
    args = parser.parse_args(argv)
    problems = preflight(args.venv, args.root)
    for problem in problems:
        print(f"preflight: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
