"""The Dockerfile, checked without a Docker engine: the habits hadolint would ask for, no secret baked in,
and every command the Nomad specs give the image resolves to something the image really contains."""

from __future__ import annotations

import argparse
import configparser
import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib.metadata import distribution
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "nomad"


# -- a small Dockerfile parser ---------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of CMD/ENTRYPOINT/RUN in exec form, else None (shell form)."""
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """`--from=build --chown=1:1 a b c` as ({"from": "build", "chown": "1:1"}, ["a", "b", "c"])."""
        words = shlex.split(self.args, posix=True)
        flags = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(env_pairs(instruction.args))
        return values


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with their `\\` continuations joined; comment lines (also inside continuations) dropped."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        out.append((start, pending + stripped))
        pending = ""
    if pending:
        out.append((start, pending))
    return out


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages, each FROM's image with the ARGs declared before the first FROM substituted (as Docker does:
    only those are in scope for FROM)."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for number, line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), number)
        if instruction.keyword == "ARG" and not stages:
            global_args.update(env_pairs(instruction.args))
        elif instruction.keyword == "FROM":
            words = instruction.flags_and_words()[1]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)),
                          words[0])
            stages.append(Stage(base, name))
        else:
            assert stages, f"line {number}: {keyword} before any FROM"
            stages[-1].instructions.append(instruction)
    return stages


def env_pairs(args: str) -> dict[str, str]:
    """ENV (or ARG) arguments: `A=1 B="two words"`, or the legacy `A value`."""
    words = shlex.split(args, posix=True)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.partition("=")[::2] for word in words)


# -- the generic rules -----------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIALS?|AUTH)(_|$)", re.IGNORECASE)
CREDENTIAL_VALUE = re.compile(r"\b(hvs|s)\.[A-Za-z0-9_-]{20,}|\bAKIA[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY")


def problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile, one line per problem (empty: nothing)."""
    found: list[str] = []
    stages = parse_dockerfile(text)
    if not stages:
        return ["no FROM"]
    final = stages[-1]
    if not re.fullmatch(r"python:3\.11-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", final.base):
        found.append(f"final stage base {final.base!r} is not python:3.11-slim*")
    for stage in stages:
        if stage.base in {other.name for other in stages}:
            continue  # FROM an earlier stage
        if ":" not in stage.base.split("/")[-1].split("@")[0] or stage.base.split("@")[0].endswith(":latest"):
            found.append(f"base image {stage.base!r} is not pinned to a version")
        if not re.search(r"@sha256:[0-9a-f]{64}$", stage.base):
            found.append(f"base image {stage.base!r} is not pinned by digest (a tag moves; the build must not)")
        for i in stage.instructions:
            if i.keyword == "ADD" and re.search(r"(https?|ftp)://|git@", i.args):
                found.append(f"line {i.line}: ADD of a URL (download in a RUN with a checksum, or COPY)")
            if i.keyword in ("ENV", "ARG"):
                for name, value in env_pairs(i.args).items():
                    if SECRET_NAME.search(name):
                        found.append(f"line {i.line}: {i.keyword} {name} looks like a secret")
                    if CREDENTIAL_VALUE.search(value):
                        found.append(f"line {i.line}: {i.keyword} {name} holds a credential-looking value")
            if i.keyword == "RUN":
                found.extend(f"line {i.line}: {p}" for p in run_problems(i.args))
    users = final.all("USER")
    if not users:
        found.append("the final stage runs as root (no USER)")
    else:
        user = users[-1].args.split(":")[0]
        if not re.fullmatch(r"\d+", user):
            found.append(f"USER {users[-1].args!r}: use a numeric uid (Kubernetes/Nomad can then verify non-root)")
        elif int(user) == 0:
            found.append("USER 0 is root")
    if not final.all("WORKDIR"):
        found.append("the final stage sets no WORKDIR")
    env = final.env()
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"):
        if env.get(name) != "1":
            found.append(f"ENV {name}=1 missing in the final stage")
    return found


def run_problems(command: str) -> list[str]:
    found = []
    for segment in re.split(r"&&|;|\|\|", command):
        words = segment.split()
        if any(w in ("pip", "pip3") or w.endswith("/pip") for w in words) and {"install", "wheel"} & set(words):
            if "--no-cache-dir" not in words:
                found.append(f"pip without --no-cache-dir: {segment.strip()}")
            if any(re.search(r"\[[^\]]*test", w) for w in words) or "-e" in words or "--editable" in words:
                found.append(f"pip installs test extras or an editable tree: {segment.strip()}")
        if "apt-get" in words and "install" in words:
            if "--no-install-recommends" not in words:
                found.append(f"apt-get install without --no-install-recommends: {segment.strip()}")
            if "-y" not in words and "--yes" not in words:
                found.append(f"apt-get install without -y: {segment.strip()}")
    if re.search(r"apt-get\s+(-\S+\s+)*install", command):
        if "apt-get update" not in command:
            found.append("apt-get install without apt-get update in the same RUN (a stale cached index)")
        if "rm -rf /var/lib/apt/lists" not in command:
            found.append("apt-get install without removing /var/lib/apt/lists in the same RUN")
    if re.search(r"\b(curl|wget)\b[^|]*\|\s*(ba)?sh", command):
        found.append("a downloaded script piped into a shell")
    if re.search(r"(^|\s)sudo\s", command):
        found.append("sudo in a RUN")
    return found


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_dockerfile_has_no_problem():
    assert problems(dockerfile()) == []


BAD = """\
FROM python:latest AS build
ARG GITLAB_TOKEN
RUN pip install -e '.[test]'
FROM python:3.12-slim
ENV AWS_SECRET_ACCESS_KEY=abc PYTHONUNBUFFERED=1
ENV VAULT_ADDR=http://vault:8200 TOKEN_HINT=hvs.CAESIJ0123456789abcdefghij
ADD https://example.com/tool.tar.gz /opt/
RUN apt-get install -y libgomp1
RUN curl -fsSL https://example.com/install.sh | sh
USER caravan
"""


@pytest.mark.parametrize("expected", [
    "final stage base 'python:3.12-slim'", "base image 'python:latest' is not pinned", "ARG GITLAB_TOKEN looks like",
    "base image 'python:3.12-slim' is not pinned by digest",
    "pip without --no-cache-dir", "pip installs test extras", "ENV AWS_SECRET_ACCESS_KEY looks like",
    "TOKEN_HINT holds a credential-looking value", "ADD of a URL", "without --no-install-recommends",
    "without apt-get update", "without removing /var/lib/apt/lists", "piped into a shell", "numeric uid",
    "no WORKDIR", "PYTHONDONTWRITEBYTECODE=1 missing",
])
def test_the_checker_finds_each_problem_of_a_bad_dockerfile(expected):
    assert any(expected in problem for problem in problems(BAD)), problems(BAD)


DIGEST = "sha256:" + "0" * 64


def test_root_by_number_or_no_user_is_rejected():
    base = f"FROM python:3.11-slim@{DIGEST}\nWORKDIR /app\nENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1\n"
    assert problems(base + "USER 10001\n") == []
    assert problems(base + "USER 0:0\n") == ["USER 0 is root"]
    assert problems(base) == ["the final stage runs as root (no USER)"]
    assert problems(base + "USER 10001\nUSER 0\n") == ["USER 0 is root"]


def test_continuations_and_comments_are_joined_like_docker_does():
    lines = logical_lines("RUN a \\\n  # comment inside\n  && b\nENV X=1\n")
    assert lines == [(1, "RUN a  && b"), (4, "ENV X=1")]


# -- this image: build from a wheel, runtime without test extras, the specs inside -------------------------


def stages() -> list[Stage]:
    return parse_dockerfile(dockerfile())


def test_a_build_stage_makes_the_wheels_and_the_runtime_installs_only_those():
    build, runtime = stages()[0], stages()[-1]
    assert len(stages()) >= 2 and build.name
    assert any(re.search(r"pip wheel .*--wheel-dir \S+ \.$", i.args) for i in build.all("RUN"))
    installs = [i.args for i in runtime.all("RUN") if "pip install" in i.args]
    assert len(installs) == 1
    (install,) = installs
    assert f"from={build.name}" in install and "--no-index" in install and "[" not in install
    assert re.search(r"--find-links[= ]\S+ caravan$", install), "install the project wheel (runtime deps only)"


def test_the_system_libraries_the_wheels_need_and_the_init_are_installed_in_the_runtime():
    from tests.unit.test_system_deps import preflight

    runtime = stages()[-1]
    packages = " ".join(i.args for i in runtime.all("RUN") if "apt-get" in i.args).split()
    # The same table the preflight checks and tests/unit/test_system_deps.py derives (libgomp1 today).
    assert "libgomp1" in packages and "tini" in packages
    for library in preflight().SYSTEM_LIBRARIES:
        assert library.apt in packages, f"{library.soname}: the runtime does not install {library.apt}"


def test_the_specs_and_luigi_cfg_are_in_the_image_where_caravan_looks():
    runtime = stages()[-1]
    workdir = runtime.all("WORKDIR")[-1].args
    copied = {tuple(i.flags_and_words()[1]) for i in runtime.all("COPY")}
    assert ("nomad/", "nomad/") in copied and ("luigi.cfg", "./") in copied
    assert runtime.env()["CARAVAN_JOBSPEC_DIR"] == f"{workdir}/nomad"


def test_port_8080_is_exposed_as_the_serving_spec_maps_it():
    runtime = stages()[-1]
    assert [i.args for i in runtime.all("EXPOSE")] == ["8080"]
    assert re.search(r"to\s*=\s*8080", (SPECS / "serving.nomad.hcl").read_text())


def test_no_copy_source_is_excluded_by_dockerignore_and_local_state_is():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        for pattern in patterns:
            pattern = pattern.strip("/")
            if pattern.startswith("**/"):
                if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                    return True
            elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
                return True
        return False

    for stage in stages():
        for copy in stage.all("COPY"):
            flags, words = copy.flags_and_words()
            if "from" in flags:
                continue
            for source in words[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                assert not ignored(source), f"COPY {source} but .dockerignore leaves it out of the context"
    for local in (".venv", ".git", ".caravan", "tests", ".hypothesis", "src/caravan/__pycache__"):
        assert ignored(local), f"{local} is sent to the Docker daemon"


# -- every command the specs run resolves inside the image -------------------------------------------------


def task_commands() -> list[tuple[str, str, list[str]]]:
    """(spec, command, args) of every task in nomad/*.nomad.hcl; ${var.x} replaced by the variable's default."""
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    out = []
    for path in sorted(SPECS.glob("*.nomad.hcl")):
        tree = hcl2.loads(path.read_text(), serialization_options=options)
        defaults = {name: body.get("default") for entry in tree.get("variable", []) for name, body in entry.items()}

        def resolve(value: str, defaults: dict[str, Any] = defaults) -> str:
            return re.sub(r"\$\{var\.(\w+)\}", lambda m: str(defaults[m.group(1)]), value)

        for job in tree["job"]:
            for body in job.values():
                for group in body["group"]:
                    for group_body in group.values():
                        for task in group_body["task"]:
                            for task_body in task.values():
                                (config,) = task_body["config"]
                                out.append((path.name, resolve(config["command"]),
                                            [resolve(a) for a in config.get("args", [])]))
    return out


def console_scripts() -> dict[str, str]:
    """Console scripts the installed wheel brings: the project's (setup.cfg) and its dependencies' that the
    specs use (luigi's)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = {}
    for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = line.partition("=")
        scripts[name.strip()] = target.strip()
    requires = {re.split(r"[<>=!~ \[]", r.strip())[0].lower() for r in cfg["options"]["install_requires"].split()}
    if "luigi" in requires:
        for entry in distribution("luigi").entry_points:
            if entry.group == "console_scripts":
                scripts[entry.name] = entry.value
    return scripts


def resolves(command: str, args: list[str]) -> str | None:
    """None when `command args` can run in the image, else why not."""
    scripts = console_scripts()
    if command == "python":
        if args[:2] == ["-m", "caravan.entrypoint"]:
            # The retrain run's wrapper (SIGTERM stops the steps): it runs luigi, a console script of the image.
            module = ROOT / "src" / "caravan" / "entrypoint.py"
            wrapped = ["luigi"] if "luigi" in args[2:] else args[-1:]
            if not module.exists():
                return "no module src/caravan/entrypoint.py"
            return None if wrapped == ["luigi"] and "luigi" in scripts else f"caravan.entrypoint runs {wrapped}"
        if args[:1] != ["-m"] or not re.fullmatch(r"jobs\.\w+", args[1]):
            return f"python {args}: caravan's specs run python -m jobs.<step> or python -m caravan.entrypoint"
        module = ROOT / "jobs" / f"{args[1].split('.')[1]}.py"
        return None if module.exists() else f"no module {module.relative_to(ROOT)}"
    if command in ("/bin/sh", "sh"):
        script = args[-1]
        execs = re.findall(r"\bexec\s+(\S+(?:\s+-m\s+\S+)?)", script)
        wrapped = [e for e in execs if e.startswith("python -m caravan.entrypoint")]
        if wrapped and resolves("python", ["-m", "caravan.entrypoint", *script.split("caravan.entrypoint", 1)[1]
                                           .split()]) is not None:
            return "sh -c execs caravan.entrypoint without luigi"
        plain = [e for e in execs if e not in wrapped]
        return None if execs and all(e in scripts for e in plain) else f"sh -c execs {execs}, not console scripts"
    if command not in scripts:
        return f"{command} is not a console script of the image"
    if command == "caravan":
        from caravan.cli import build_parser

        parser = build_parser()
        (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not args or args[0] not in commands.choices:
            return f"caravan {args}: no such subcommand"
        try:
            parser.parse_args(args)
        except SystemExit:
            return f"caravan {args}: rejected by caravan's own argument parser"
    return None


def test_every_task_command_in_the_specs_resolves_in_the_image():
    commands = task_commands()
    assert {spec for spec, _, _ in commands} == {p.name for p in SPECS.glob("*.nomad.hcl")}
    for spec, command, args in commands:
        assert resolves(command, args) is None, f"{spec}: {resolves(command, args)}"
    used = {(command, args[1] if command == "python" else "") for _, command, args in commands}
    assert ("caravan", "") in used and any(c == "python" for c, _ in used)


def test_the_resolver_rejects_what_the_image_cannot_run():
    assert resolves("python", ["-m", "jobs.no_such_step"]) == "no module jobs/no_such_step.py"
    assert resolves("python", ["train.py"]) is not None
    assert resolves("caravan", ["serv", "--model", "ranker"]) is not None
    assert resolves("caravan", ["serve"]) is not None  # --model is required
    assert resolves("gunicorn", []) is not None
    assert resolves("/bin/sh", ["-c", "exec luigi --module pipelines.ranker RetrainRanker"]) is None
    assert resolves("/bin/sh", ["-c", "exec python -m caravan.entrypoint --deadline 6h luigi --module m T"]) is None
    assert resolves("/bin/sh", ["-c", "exec python -m caravan.entrypoint --deadline 6h gunicorn"]) is not None
    assert resolves("/bin/sh", ["-c", "exec python -m jobs.evaluate"]) is not None


def test_nomads_command_replaces_cmd_and_the_venv_comes_first_on_path():
    runtime = stages()[-1]
    entrypoints = runtime.all("ENTRYPOINT")
    if entrypoints:
        entry = entrypoints[-1].exec_form()
        # Nomad's docker driver keeps the image's ENTRYPOINT and replaces CMD with command + args: the
        # entrypoint must be an init that runs its arguments as they are.
        assert entry is not None and entry[-1] == "--" and Path(entry[0]).name in ("tini", "dumb-init"), entry
    (cmd,) = [i.exec_form() for i in runtime.all("CMD")][-1:]
    assert cmd is not None and resolves(cmd[0], cmd[1:]) is None
    venv = re.search(r"python -m venv (\S+)", " ".join(i.args for i in runtime.all("RUN")))
    assert venv, "the runtime installs into a virtualenv"
    assert runtime.env()["PATH"].split(":")[0] == f"{venv.group(1)}/bin", "python and the console scripts"


# -- reproducible: the base pinned by digest, every package by version and hash ----------------------------

REQUIREMENTS = ROOT / "requirements"
LOCK_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A pip-compile --generate-hashes file: normalized name -> (version, its sha256 hashes)."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in path.read_text().splitlines():
        match = LOCK_LINE.match(line)
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            found[name] = (match.group(2).rstrip(" \\"), [])
        elif name and line.strip().startswith("--hash=sha256:"):
            found[name][1].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{path.name}: {line!r} is not a pinned requirement")
    return found


def install_requires() -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ \[;]", r.strip())[0]).lower()
            for r in cfg["options"]["install_requires"].split("\n") if r.strip()}


def test_a_stage_from_a_global_arg_gets_its_value_like_docker_does():
    (stage,) = parse_dockerfile(f"ARG BASE=python:3.11-slim@{DIGEST}\nFROM ${{BASE}} AS x\nRUN true\n")
    assert (stage.base, stage.name) == (f"python:3.11-slim@{DIGEST}", "x")
    assert any("not pinned by digest" in p for p in problems("FROM python:3.11-slim\nUSER 1\nWORKDIR /a\n"))


def test_every_stage_of_the_image_starts_from_the_official_base_pinned_by_digest():
    bases = {stage.base for stage in stages()}
    assert len(bases) == 1, "build and runtime from the same base: the wheels built fit the runtime's Python"
    (base,) = bases
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), base
    # Where the digest comes from is written next to it (docker-library's record of the official images).
    assert "github.com/docker-library/repo-info/" in dockerfile()


def test_the_build_installs_only_locked_hashed_packages_and_never_an_unpinned_build_backend():
    build = stages()[0]
    runs = [i.args for i in build.all("RUN") if re.search(r"\bpip (install|wheel)\b", i.args)]
    assert any("--require-hashes -r requirements/build.txt" in r for r in runs), runs
    assert any("--require-hashes" in r and "-r requirements/runtime.txt" in r for r in runs), runs
    for run in runs:
        if "pip wheel" in run:
            # Without isolation a build uses the locked setuptools instead of fetching whatever is newest.
            assert "--no-build-isolation" in run, run
            assert "--require-hashes" in run or "--no-deps" in run, f"a wheel build that resolves freely: {run}"
    copies = [i.flags_and_words()[1] for i in build.all("COPY")]
    assert ["requirements/", "requirements/"] in copies


@pytest.mark.parametrize("name", ["runtime.txt", "build.txt", "test.txt"])
def test_every_locked_package_is_pinned_with_a_hash(name):
    pinned = lock(REQUIREMENTS / name)
    assert pinned
    for package, (version, hashes) in pinned.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"{package}=={version}"
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), package


def test_the_locks_cover_the_dependencies_and_agree_with_each_other():
    runtime, build, tested = (lock(REQUIREMENTS / n) for n in ("runtime.txt", "build.txt", "test.txt"))
    assert install_requires() <= set(runtime), sorted(install_requires() - set(runtime))
    assert {"setuptools", "wheel"} <= set(build)
    # CI tests exactly what the image runs: every runtime pin is the tested one.
    assert {p: v for p, (v, _) in runtime.items()} == {p: tested[p][0] for p in runtime if p in tested}
    assert set(runtime) <= set(tested)


def test_ci_installs_the_locked_dependencies_before_anything_else():
    import yaml

    ci = yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())
    before = ci[".python"]["before_script"]
    installs = [i for i, line in enumerate(before) if "pip install" in line]
    assert installs and "--require-hashes -r requirements/test.txt" in before[installs[0]], before
    assert ci["cache"]["key"]["files"] == ["requirements/test.txt"]
    for name, job in ci.items():
        lines = [str(line) for key in ("before_script", "script") for line in (job.get(key) or [])] \
            if isinstance(job, dict) else []
        for line in lines:
            # Nothing upgrades past the lock; the project itself goes in on top of it.
            assert not re.search(r"pip install.*(--upgrade|\s-U\b)", line), f"{name}: {line}"
        if job_extends_python(ci, name):
            assert not [line for line in lines if re.search(r"pip install[^\n]*-r (?!requirements/)", line)], name


def job_extends_python(ci: dict[str, Any], name: str) -> bool:
    job = ci.get(name)
    while isinstance(job, dict):
        parent = job.get("extends")
        if parent == ".python":
            return True
        job = ci.get(parent) if isinstance(parent, str) else None
    return False
