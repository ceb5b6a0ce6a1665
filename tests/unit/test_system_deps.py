"""What the installed wheels need from the system is derived from their ELF files, and the README and the
preflight (scripts/preflight.py) name exactly that.

LightGBM's wheels link the OpenMP runtime without vendoring it (lightgbm-org/LightGBM#7141); a slim image
lacks it, and `import lightgbm` fails there. This test reads the `NEEDED` entries of every shared object in
the virtualenv the tests run in, drops the libraries the wheels vendor and the ones the manylinux policy
guarantees, and compares the rest with the preflight's table and the README's prerequisites.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="ELF shared objects: Linux wheels only")


@cache
def preflight() -> Any:
    """scripts/preflight.py as a module (it is a standalone script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("preflight", ROOT / "scripts" / "preflight.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the README's prerequisites --------------------------------------------------------------------------

PLATFORM_LABELS = {"Debian/Ubuntu": "debian", "Fedora/RHEL": "fedora", "macOS": "darwin"}


def readme_prerequisites() -> dict[str, tuple[str, str]]:
    """platform -> (its install command, the rest of its line) from the README's Prerequisites section."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^### Prerequisites\n(.*?)(?=^#)", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '### Prerequisites' section"
    lines = {}
    for label, command, rest in re.findall(r"^- ([^:\n]+): `([^`]+)`(.*)$", section.group(1), re.MULTILINE):
        assert label in PLATFORM_LABELS, f"README prerequisites: unknown platform {label!r}"
        lines[PLATFORM_LABELS[label]] = (command, rest)
    assert set(lines) == set(PLATFORM_LABELS.values()), f"one line per platform: {sorted(lines)}"
    return lines


def installed_packages(command: str) -> list[str]:
    """The packages an `apt-get install`, `dnf install` or `brew install` command names (options left out)."""
    words = command.split()
    assert "install" in words, command
    return [word for word in words[words.index("install") + 1:] if not word.startswith("-")]


def test_the_readme_has_one_install_line_per_platform_with_the_platforms_tool():
    lines = readme_prerequisites()
    for platform, (command, _) in lines.items():
        tool = preflight().INSTALLERS[platform]
        assert re.fullmatch(rf"(sudo )?{tool}( [\w.+-]+)+", command), f"{platform}: {command!r}"
        assert installed_packages(command) and len(set(installed_packages(command))) == len(
            installed_packages(command))
    debian_rest = lines["debian"][1]
    # Debian and Ubuntu ship ensurepip in python3-venv: the README and the preflight name the same package.
    assert f"`{preflight().VENV_PACKAGES['debian']}`" in debian_rest and "`ensurepip`" in debian_rest


def test_the_readme_names_every_library_of_the_preflight_for_every_platform():
    lines = readme_prerequisites()
    text = (ROOT / "README.md").read_text()
    for library in preflight().SYSTEM_LIBRARIES:
        assert library.soname in text, f"README does not name {library.soname}"
        for platform, package in (("debian", library.apt), ("fedora", library.dnf), ("darwin", library.brew)):
            assert package in installed_packages(lines[platform][0]), (
                f"README's {platform} line does not install {package} ({library.soname})")


# -- the derivation --------------------------------------------------------------------------------------


@linux_only
def test_the_installed_wheels_need_from_the_system_exactly_what_the_preflight_and_readme_name():
    site = sysconfig.get_paths()["platlib"]
    assert Path(site, "lightgbm").is_dir(), f"the test extras are not installed in {site}"
    needs, problems = preflight().scan([site])
    assert problems == []
    # Today LightGBM is the one wheel that does not vendor a library it links (its OpenMP runtime).
    assert needs.get("libgomp.so.1", "").startswith("lightgbm/"), needs
    table = {library.soname for library in preflight().SYSTEM_LIBRARIES}
    missing = {soname: who for soname, who in needs.items() if soname not in table}
    assert not missing, ("the wheels need these from the system and neither scripts/preflight.py's "
                         f"SYSTEM_LIBRARIES nor the README's prerequisites name them: {missing}")
    assert set(needs) == table, f"no installed wheel needs {sorted(table - set(needs))} any more: drop it"


@linux_only
def test_the_manylinux_base_is_what_the_interpreter_itself_links():
    """The base set is not a guess: the glibc family, the GCC runtime and zlib are what the Python running the
    tests and its own extension modules link against (pip cannot unpack a wheel without zlib)."""
    base = preflight().MANYLINUX_BASE
    dynload = Path(sysconfig.get_path("platstdlib"), "lib-dynload")
    linked = set()
    for path in [Path(sys.executable).resolve(), *dynload.glob("zlib*.so")]:
        dynamic = preflight().read_dynamic(str(path))
        if dynamic is not None:
            linked |= set(dynamic.needed)
    assert "libc.so.6" in base and "libz.so.1" in base and "libstdc++.so.6" in base
    from_python = {name for name in linked if not name.startswith("libpython")}
    assert all(preflight().is_manylinux_base(name) for name in from_python), from_python


# -- the scanner on a built site-packages ------------------------------------------------------------------

EM_X86_64, EM_AARCH64 = 62, 183
DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 10, 14, 15, 29


def build_elf(needed: list[str], soname: str | None = None, runpath: list[str] | None = None, *, wide: bool = True,
              little: bool = True, machine: int = EM_X86_64, rpath_tag: int = DT_RUNPATH) -> bytes:
    """A minimal ELF shared object: a header, one PT_LOAD over the whole file (loaded at 0x400000, so the
    string table's address differs from its offset, as in a real object) and a PT_DYNAMIC."""
    order = "<" if little else ">"
    strings = bytearray(b"\0")

    def add(value: str) -> int:
        offset = len(strings)
        strings.extend(value.encode() + b"\0")
        return offset

    tags = [(DT_NEEDED, add(name)) for name in needed]
    if soname is not None:
        tags.append((DT_SONAME, add(soname)))
    if runpath:
        tags.append((rpath_tag, add(":".join(runpath))))
    ehsize, phentsize = (64, 56) if wide else (52, 32)
    strtab = ehsize + 2 * phentsize
    dynamic = (strtab + len(strings) + 7) // 8 * 8
    base = 0x400000
    tags += [(DT_STRTAB, base + strtab), (DT_STRSZ, len(strings)), (0, 0)]
    dyn = b"".join(struct.pack(order + ("qQ" if wide else "iI"), tag, value) for tag, value in tags)
    total = dynamic + len(dyn)
    ident = b"\x7fELF" + bytes([2 if wide else 1, 1 if little else 2, 1]) + bytes(9)
    if wide:
        header = ident + struct.pack(order + "HHIQQQIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, 2,
                                     64, 0, 0)
        phdrs = (struct.pack(order + "IIQQQQQQ", 1, 5, 0, base, base, total, total, 0x1000)
                 + struct.pack(order + "IIQQQQQQ", 2, 6, dynamic, base + dynamic, base + dynamic, len(dyn),
                               len(dyn), 8))
    else:
        header = ident + struct.pack(order + "HHIIIIIHHHHHH", 3, machine, 1, 0, ehsize, 0, 0, ehsize, phentsize, 2,
                                     40, 0, 0)
        phdrs = (struct.pack(order + "IIIIIIII", 1, 0, base, base, total, total, 5, 0x1000)
                 + struct.pack(order + "IIIIIIII", 2, dynamic, base + dynamic, base + dynamic, len(dyn), len(dyn),
                               6, 4))
    body = header + phdrs + bytes(strings)
    return body + bytes(dynamic - len(body)) + dyn


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_the_scan_keeps_only_what_no_wheel_vendors_for_the_object_and_no_manylinux_system_lacks(tmp_path):
    site = tmp_path / "site-packages"
    write(site / "pkg" / "_ext.cpython-311-x86_64-linux-gnu.so", build_elf(
        ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2", "libstdc++.so.6", "libz.so.1",  # manylinux base
         "libbeside.so.1",     # in the object's own folder
         "libdeep.so.4",       # elsewhere in the same top-level package
         "libvend-ab12.so.2",  # in a *.libs folder (auditwheel)
         "librpath.so.3",      # in another top-level folder, through RUNPATH $ORIGIN/../../shared
         "libnamed.so.5",      # a file of another name whose SONAME it is
         "libgomp.so.1",       # from the system
         "libother.so.1"],     # vendored by another wheel, which this object cannot reach: from the system too
        runpath=["$ORIGIN/../shared", "/usr/local/lib"]))
    write(site / "pkg" / "libbeside.so.1", build_elf(["libc.so.6"]))
    write(site / "pkg" / "sub" / "libdeep.so.4", build_elf([]))
    write(site / "pkg" / "sub" / "libnamed-9f.so", build_elf([], soname="libnamed.so.5"))
    write(site / "pkg.libs" / "libvend-ab12.so.2", build_elf(["libc.so.6"]))
    write(site / "shared" / "librpath.so.3", build_elf([]))
    write(site / "other" / "libother.so.1", build_elf([]))
    write(site / "other" / "notes.so.txt", b"not an ELF file")  # named like one, skipped
    # A module at the top of site-packages (as cffi installs _cffi_backend), beside a library of its own.
    write(site / "_top.cpython-311-x86_64-linux-gnu.so", build_elf(["libtop.so.1", "libffi.so.8", "libgomp.so.1"]))
    write(site / "libtop.so.1", build_elf([]))
    needs, problems = preflight().scan([str(site)])
    assert problems == []
    assert needs == {"libgomp.so.1": "_top.cpython-311-x86_64-linux-gnu.so",
                     "libffi.so.8": "_top.cpython-311-x86_64-linux-gnu.so",
                     "libother.so.1": "pkg/_ext.cpython-311-x86_64-linux-gnu.so"}


def test_an_unreadable_elf_object_is_a_problem_named_by_its_path(tmp_path):
    site = tmp_path / "site-packages"
    write(site / "pkg" / "broken.so", build_elf(["libgomp.so.1"])[:80])  # cut inside the program headers
    needs, problems = preflight().scan([str(site)])
    assert needs == {}
    assert len(problems) == 1 and problems[0].startswith("cannot read pkg/broken.so: ")


# -- the ELF reader --------------------------------------------------------------------------------------

names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters=":"), min_size=1,
                max_size=40)


@settings(max_examples=150, deadline=None)
@given(needed=st.lists(names, max_size=12), soname=st.none() | names, runpath=st.lists(names, max_size=3),
       wide=st.booleans(), little=st.booleans(), machine=st.sampled_from([EM_X86_64, EM_AARCH64, 3, 40]),
       rpath_tag=st.sampled_from([DT_RUNPATH, DT_RPATH]))
def test_read_dynamic_gives_back_what_the_object_was_built_with(tmp_path_factory, needed, soname, runpath, wide,
                                                                little, machine, rpath_tag):
    path = write(tmp_path_factory.mktemp("elf") / "lib.so", build_elf(
        needed, soname, runpath, wide=wide, little=little, machine=machine, rpath_tag=rpath_tag))
    dynamic = preflight().read_dynamic(str(path))
    assert dynamic.needed == needed and dynamic.soname == soname and dynamic.runpath == runpath
    assert dynamic.machine == (2 if wide else 1, 1 if little else 2, machine)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([b"\x7fELF\x02\x01\x01", b"\x7fELF\x01\x02\x01", b""]))
def test_read_dynamic_on_any_bytes_answers_or_raises_elf_error(tmp_path_factory, tail, head):
    path = write(tmp_path_factory.mktemp("junk") / "junk.so", head + tail)
    try:
        result = preflight().read_dynamic(str(path))
    except preflight().ElfError:
        return
    assert result is None or isinstance(result.needed, list)


def test_sizes_a_corrupt_header_claims_are_refused_before_anything_is_read(tmp_path):
    good = build_elf(["libgomp.so.1"])
    claimed = struct.pack("<qQ", DT_STRSZ, len(b"\0libgomp.so.1\0"))
    assert good.count(claimed) == 1
    path = write(tmp_path / "huge.so", good.replace(claimed, struct.pack("<qQ", DT_STRSZ, 2**62)))
    with pytest.raises(preflight().ElfError, match="beyond the end of the file"):
        preflight().read_dynamic(str(path))


@linux_only
@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils' readelf is the oracle")
def test_read_dynamic_agrees_with_readelf_on_the_installed_wheels():
    site = Path(sysconfig.get_paths()["platlib"])
    objects = sorted(site.glob("lightgbm/lib/*.so")) + sorted(site.glob("numpy/_core/*.so"))[:5] + sorted(
        site.glob("*.libs/*.so*"))[:5]
    assert objects
    for path in objects:
        listing = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        assert preflight().read_dynamic(str(path)).needed == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+)\]",
                                                                        listing), path
