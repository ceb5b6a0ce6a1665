""".pre-commit-config.yaml is a valid pre-commit config whose hooks run the same checks as `make lint
typecheck` and CI. pre-commit itself is not a dependency: the schema below follows pre-commit's own
(pre_commit/clientlib.py: CONFIG_SCHEMA, LOCAL_HOOK_DICT), written out for the keys this project uses."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

LANGUAGES = ["conda", "coursier", "dart", "docker", "docker_image", "dotnet", "fail", "golang", "haskell", "julia",
             "lua", "node", "perl", "pygrep", "python", "r", "ruby", "rust", "script", "swift", "system",
             "unsupported", "unsupported_script"]
STAGES = ["commit-msg", "post-checkout", "post-commit", "post-merge", "post-rewrite", "pre-commit",
          "pre-merge-commit", "pre-push", "pre-rebase", "prepare-commit-msg", "manual"]
_STRINGS = {"type": "array", "items": {"type": "string"}}
LOCAL_HOOK = {
    "type": "object",
    "required": ["id", "name", "entry", "language"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$"},
        "name": {"type": "string", "minLength": 1},
        "entry": {"type": "string", "minLength": 1},
        "language": {"enum": LANGUAGES},
        "alias": {"type": "string"},
        "files": {"type": "string"},
        "exclude": {"type": "string"},
        "types": {**_STRINGS, "items": {"type": "string", "pattern": r"^[a-z0-9_+-]+$"}},
        "types_or": {**_STRINGS, "items": {"type": "string", "pattern": r"^[a-z0-9_+-]+$"}},
        "exclude_types": _STRINGS,
        "additional_dependencies": _STRINGS,
        "args": _STRINGS,
        "always_run": {"type": "boolean"},
        "fail_fast": {"type": "boolean"},
        "pass_filenames": {"type": "boolean"},
        "description": {"type": "string"},
        "language_version": {"type": "string"},
        "log_file": {"type": "string"},
        "minimum_pre_commit_version": {"type": "string"},
        "require_serial": {"type": "boolean"},
        "stages": {"type": "array", "items": {"enum": STAGES}},
        "verbose": {"type": "boolean"},
    },
}
SCHEMA = {
    "type": "object",
    "required": ["repos"],
    "additionalProperties": False,
    "properties": {
        "repos": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["repo", "hooks"],
                "properties": {"repo": {"type": "string"}, "rev": {"type": "string"},
                               "hooks": {"type": "array", "minItems": 1}},
                "additionalProperties": False,
                # A local repo has no rev and its hooks define everything; remote repos pin a rev.
                "if": {"properties": {"repo": {"const": "local"}}},
                "then": {"not": {"required": ["rev"]}, "properties": {"hooks": {"items": LOCAL_HOOK}}},
                "else": {"required": ["rev"]},
            },
        },
        "default_install_hook_types": _STRINGS,
        "default_language_version": {"type": "object"},
        "default_stages": {"type": "array", "items": {"enum": STAGES}},
        "files": {"type": "string"},
        "exclude": {"type": "string"},
        "fail_fast": {"type": "boolean"},
        "minimum_pre_commit_version": {"type": "string"},
        "ci": {"type": "object"},
    },
}


def validate(config: Any) -> None:
    """Raise jsonschema.ValidationError (or re.error for a bad files/exclude regex) for an invalid config."""
    jsonschema.validate(config, SCHEMA)
    for key in ("files", "exclude"):
        if key in config:
            re.compile(config[key])
    for repo in config["repos"]:
        for hook in repo["hooks"]:
            for key in ("files", "exclude"):
                if key in hook:
                    re.compile(hook[key])


def load() -> dict[str, Any]:
    return yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())


def hooks() -> dict[str, dict[str, Any]]:
    return {hook["id"]: hook for repo in load()["repos"] for hook in repo["hooks"]}


def test_the_config_is_valid():
    validate(load())


@pytest.mark.parametrize("breakage", [
    lambda c: c["repos"][0]["hooks"][0].pop("entry"),
    lambda c: c["repos"][0]["hooks"][0].update(language="bash"),
    lambda c: c["repos"][0].update(rev="v1.0.0"),
    lambda c: c["repos"][0]["hooks"][0].update(files="^(src|tests/"),
    lambda c: c["repos"][0]["hooks"][0].update(stages=["commit"]),
    lambda c: c["repos"][0]["hooks"][0].update(pass_filenames="no"),
    lambda c: c.update(hooks=[]),
    lambda c: c["repos"].append({"repo": "https://github.com/example/hooks", "hooks": [{"id": "x"}]}),
])
def test_the_validator_rejects_broken_configs(breakage):
    config = copy.deepcopy(load())
    breakage(config)
    with pytest.raises((jsonschema.ValidationError, re.error)):
        validate(config)


def test_only_local_hooks_that_run_the_projects_own_tools():
    config = load()
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    for hook_id, hook in hooks().items():
        executable = hook["entry"].split()[0]
        assert executable.startswith(".venv/bin/"), f"{hook_id}: run the project's pinned tool, not {executable}"
        assert (BIN / Path(executable).name).exists(), f"{hook_id}: {executable} is not installed by '.[test]'"


def makefile_command(target: str) -> str:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{target}:.*\n\t(.+)$", text, re.MULTILINE)
    assert match, f"Makefile has no {target} target"
    return match.group(1).replace("$(BIN)/", ".venv/bin/")


def test_ruff_and_mypy_hooks_check_what_make_lint_and_typecheck_check():
    lint = makefile_command("lint").split()  # .venv/bin/ruff check src tests jobs pipelines bench scripts
    ruff = hooks()["ruff"]
    assert ruff["entry"].split()[:2] == lint[:2]
    covered = re.fullmatch(r"\^\(([^)]*)\)/", ruff["files"])
    assert covered and set(covered.group(1).split("|")) == set(lint[2:])
    assert "--force-exclude" in ruff["entry"], "ruff must honour ruff.toml's excludes for the files it is given"
    mypy = hooks()["mypy"]
    assert mypy["entry"] == makefile_command("typecheck") and mypy["pass_filenames"] is False


def test_the_ci_and_infrastructure_hooks_run_on_the_files_they_check():
    gitlab = hooks()["gitlab-ci"]
    assert "--builtin-schema vendor.gitlab-ci" in gitlab["entry"]
    assert re.search(gitlab["files"], ".gitlab-ci.yml") and not re.search(gitlab["files"], "x.gitlab-ci.yml")
    infra = hooks()["infrastructure"]
    tests = [word for word in infra["entry"].split() if word.startswith("tests/")]
    assert "tests/unit/test_terraform.py" in tests
    for path in tests:
        assert (ROOT / path).is_file(), path
    for changed in ("terraform/vault.tf", "terraform/policies/vault/caravan-step.hcl", "nomad/serving.nomad.hcl",
                    "Dockerfile", ".gitlab-ci.yml", ".pre-commit-config.yaml", "jobs/evaluate.py"):
        assert re.search(infra["files"], changed), changed
    assert not re.search(infra["files"], "src/caravan/cli.py")
    assert infra["pass_filenames"] is False
