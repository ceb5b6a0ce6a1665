"""The policy files Terraform applies, rendered as ``templatefile()`` would, for tests and CI's ACL bootstrap.

``terraform/policies/<system>/<file>.hcl[.tftpl]`` is loaded per system (nomad, consul, vault) and per
*kind*, the file name without ``caravan-`` and its extensions (``retrain``, ``release``, ``pipeline``...).
Templates use plain ``${name}`` substitutions of ``environment``, ``namespace`` and ``model`` only, which is
all :func:`render` implements (a directive or an unknown name is an error, as it would be a surprise in
Terraform). Another folder of the same shape (an older copy of the policies) loads the same way, so a test can
run caravan under today's policies and under yesterday's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "terraform" / "policies"
ACCESS = ROOT / "terraform" / "access.yaml"
#: The policies as they were before issue 17 (one Nomad token for everything, no environment, no task role).
POLICIES_BEFORE_ISSUE_17 = ROOT / "tests" / "fixtures" / "policies_before_issue_17"

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


def render(template: str, **values: str) -> str:
    """``templatefile()`` of a template that uses only plain ``${name}`` substitutions."""
    names = set(_PLACEHOLDER.findall(template))
    if not names <= set(values):
        raise ValueError(f"template uses {sorted(names - set(values))} beyond {sorted(values)}")
    if "%{" in template:
        raise ValueError("policy templates must not use template directives")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def kind_of(path: Path) -> str:
    """``caravan-retrain.hcl.tftpl`` -> ``retrain``."""
    return path.name.split(".", 1)[0].removeprefix("caravan-")


def load_policies(system: str, *, environment: str, namespace: str, model: str,
                  root: Path = POLICIES) -> dict[str, str]:
    """kind -> rendered rules of every policy file of ``system`` under ``root``."""
    values = {"environment": environment, "namespace": namespace, "model": model}
    found = {}
    for path in sorted((root / system).glob("*.hcl*")):
        found[kind_of(path)] = render(path.read_text(), **values)
    return found


def policies_for(system: str, kinds: tuple[str, ...], *, environment: str, namespace: str, model: str,
                 root: Path = POLICIES) -> list[str]:
    """The rendered policies of the first of ``kinds`` that ``root`` has (``()`` if none: a token or role whose
    policy nothing defines, which grants nothing)."""
    texts = load_policies(system, environment=environment, namespace=namespace, model=model, root=root)
    for kind in kinds:
        if kind in texts:
            return [texts[kind]]
    return []


#: Token -> the policy kinds it carries, newest layout first. Before issue 17 one Nomad policy ("pipeline")
#: served the retrain job and CI alike, and no task role existed.
TOKEN_KINDS: Mapping[tuple[str, str], tuple[str, ...]] = {
    ("nomad", "retrain"): ("retrain", "pipeline"),
    ("nomad", "release"): ("release", "pipeline"),
    ("consul", "pipeline"): ("pipeline",),
    ("consul", "serving"): ("serving",),
    ("consul", "tasks"): ("tasks",),
}


def token_policies(system: str, token: str, *, environment: str, namespace: str, model: str,
                   root: Path = POLICIES) -> list[str]:
    """The rendered policies a token of ``system`` carries (see :data:`TOKEN_KINDS`)."""
    return policies_for(system, TOKEN_KINDS[(system, token)], environment=environment, namespace=namespace,
                        model=model, root=root)


def access_table() -> dict[str, Any]:
    """``terraform/access.yaml``: system -> policy name pattern -> holder, rows."""
    return dict(yaml.safe_load(ACCESS.read_text()))


def concrete(pattern: str, **values: str) -> str:
    """A table name or row with its ``<placeholders>`` filled (``<env>`` from ``environment``)."""
    names = {"env": values.get("environment", ""), **values}
    return re.sub(r"<([a-z_]+)>", lambda m: names.get(m.group(1), m.group(0)), pattern)
