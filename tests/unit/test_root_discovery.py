"""Root discovery: the nearest luigi.cfg upwards (as git finds .git), relative paths relative to their file,
and caravan and luigi reading the same settings from any folder of a project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.config import find_config, resolve_relative

_NAME = st.text(st.characters(categories=["L", "N"], include_characters="_-. "), min_size=1, max_size=12).filter(
    lambda n: n not in (".", "..") and n.strip() == n and n.lower() != "luigi.cfg")


@settings(max_examples=60, deadline=None)
@given(st.lists(_NAME, min_size=1, max_size=6),
       st.sets(st.integers(min_value=0, max_value=6)), st.sets(st.integers(min_value=0, max_value=6)))
def test_the_nearest_luigi_cfg_upwards_is_found(names, files_at, folders_at):
    with tempfile.TemporaryDirectory() as top:
        levels = [Path(top)]
        for name in names:
            levels.append(levels[-1] / name)
        levels[-1].mkdir(parents=True, exist_ok=True)
        for depth in files_at:
            if depth < len(levels):
                (levels[depth] / "luigi.cfg").write_text("[caravan]\n")
        for depth in folders_at - files_at:
            if depth < len(levels):  # a folder named luigi.cfg is not a config file
                (levels[depth] / "luigi.cfg").mkdir(exist_ok=True)
        expected = next((levels[d] / "luigi.cfg" for d in sorted(files_at, reverse=True) if d < len(levels)), None)
        found = find_config(levels[-1])
        if expected is None:
            # Nothing in the temporary tree; a luigi.cfg above the temp dir would be the machine's own.
            assert found is None or not str(found).startswith(top)
        else:
            assert found == expected


_SEGMENT = st.text(st.characters(categories=["L", "N"], include_characters="_-. "), min_size=1, max_size=10).filter(
    lambda n: n not in (".", ".."))


@settings(max_examples=200, deadline=None)
@given(st.lists(_SEGMENT, min_size=1, max_size=4), st.lists(_SEGMENT, min_size=1, max_size=4))
def test_a_relative_path_is_relative_to_its_base_and_uris_and_absolute_paths_stay(base_parts, rel_parts):
    base = os.path.join("/", *base_parts)
    relative = os.path.join(*rel_parts)
    resolved = resolve_relative(relative, base)
    assert os.path.isabs(resolved)
    assert resolved == os.path.normpath(os.path.join(base, relative))
    assert resolve_relative("/" + relative, base) == "/" + relative
    for uri in (f"s3://bucket/{relative}", f"file:///{relative}", f"webhdfs://nn:9870/{relative}"):
        assert resolve_relative(uri, base) == uri


_PROBE = ("import json, luigi, caravan.config as c; from caravan.registry import open_pointer; "
          "cfg = luigi.configuration.get_config(); "
          "print(json.dumps({'root': c.artifact_root(), 'origin': c.artifact_root_origin(), "
          "'pointers': str(open_pointer().root), 'executor': cfg.get('caravan', 'executor', ''), "
          "'luigi_root': cfg.get('caravan', 'artifact_root', ''), "
          "'child': __import__('subprocess').run([__import__('sys').executable, '-c', "
          "'import luigi.configuration as c; print(c.get_config().get(\\'caravan\\', \\'executor\\', \\'\\'))'], "
          "cwd='/', capture_output=True, text=True).stdout.strip()}))")


def probe(cwd: Path, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CARAVAN_", "LUIGI_CONFIG"))}
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_from_a_subfolder_caravan_and_luigi_read_the_project_luigi_cfg(tmp_path):
    project = tmp_path / "project"
    deep = project / "notebooks" / "2026"
    deep.mkdir(parents=True)
    (project / "luigi.cfg").write_text("[caravan]\nartifact_root = store/artifacts\npointer_root = ptrs\n"
                                       "executor = nomad\n")
    seen = probe(deep)
    assert seen["root"] == str(project / "store" / "artifacts"), "relative to the luigi.cfg's folder, not the cwd"
    assert seen["pointers"] == str(project / "ptrs")
    assert seen["executor"] == "nomad", "luigi's own config reader sees the discovered file too"
    assert seen["origin"] == f"[caravan] artifact_root in {project / 'luigi.cfg'}"
    assert seen["child"] == "nomad", "a process it starts elsewhere (a local step) reads the same luigi.cfg"
    at_top = probe(project)
    # (from the project folder, the steps get LUIGI_CONFIG_PATH from the local executor, as before)
    assert {**at_top, "child": "nomad"} == seen, "the project folder and a subfolder agree"


def test_the_variable_and_luigi_config_path_keep_their_precedence(tmp_path):
    project = tmp_path / "project"
    (project / "sub").mkdir(parents=True)
    (project / "luigi.cfg").write_text("[caravan]\nartifact_root = here\nexecutor = nomad\n")
    other = tmp_path / "elsewhere" / "explicit.cfg"
    other.parent.mkdir()
    other.write_text("[caravan]\nartifact_root = there\n")
    seen = probe(project / "sub", LUIGI_CONFIG_PATH=str(other))
    assert seen["root"] == str(other.parent / "there"), "LUIGI_CONFIG_PATH wins, relative to its own folder"
    assert seen["executor"] == "nomad", "the discovered file still provides what LUIGI_CONFIG_PATH does not set"
    assert probe(project / "sub", CARAVAN_ARTIFACT_ROOT="s3://bucket/caravan")["root"] == "s3://bucket/caravan"


def test_without_any_luigi_cfg_the_defaults_are_under_the_working_directory(tmp_path):
    seen = probe(tmp_path)
    if seen["origin"].startswith("[caravan]"):
        pytest.skip(f"this machine has a luigi.cfg above the temp dir or in /etc/luigi ({seen['origin']})")
    assert seen["root"] == str(tmp_path / ".caravan" / "artifacts")
    assert seen["pointers"] == str(tmp_path / ".caravan" / "pointers")
