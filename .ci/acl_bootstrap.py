"""CI's integration job: turn the ACLs of fresh `nomad agent -dev` / `consul agent -dev` agents into production's.

Bootstraps each agent's ACL system (its management token never leaves this process), applies the policies
Terraform applies (terraform/policies, rendered for one environment with tests/acl_policies.py), creates the
tokens caravan holds in production, and writes them to an env file (mode 0600) for the tests:

    CARAVAN_TEST_NOMAD_TOKEN   Nomad: caravan-<env>-retrain and caravan-<env>-release (the token at
                               secret/data/caravan/<env>/nomad carries both)
    CARAVAN_TEST_CONSUL_TOKEN  Consul: caravan-<env>-pipeline (the retrain job's promotion token)

Nothing secret is printed: the log says which policies and tokens were made, by name.

    python .ci/acl_bootstrap.py --nomad http://127.0.0.1:4646 --consul http://consul:8500 --out /tmp/acl.env
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.acl_policies import load_policies  # noqa: E402 - the repository root is on the path only now


class BootstrapError(Exception):
    """One line naming the agent and the call that failed."""


def _call(method: str, url: str, *, token: str | None = None, header: str = "", json: Any = None,
          deadline_s: float = 60.0) -> Any:
    """One API call, retried while the agent has no leader yet (ACL bootstrap needs one)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            response = requests.request(method, url, json=json, timeout=10,
                                        headers={header: token} if token else {})
        except requests.RequestException as exc:
            problem = f"no answer ({type(exc).__name__})"
        else:
            if response.ok:
                return response.json() if response.content else None
            problem = f"HTTP {response.status_code}: {response.text.strip()[:200]}"
            if response.status_code not in (500, 503) or "leader" not in response.text.lower():
                raise BootstrapError(f"{method} {url}: {problem}")
        if time.monotonic() >= deadline:
            raise BootstrapError(f"{method} {url}: {problem}")
        time.sleep(1)


def nomad(address: str, environment: str, namespace: str, model: str) -> str:
    """Bootstrap Nomad's ACLs, apply caravan's policies, return a token with the retrain and release ones."""
    management = _call("POST", f"{address}/v1/acl/bootstrap")["SecretID"]
    names = []
    for kind, rules in load_policies("nomad", environment=environment, namespace=namespace, model=model).items():
        name = f"caravan-{environment}-{kind}"
        _call("POST", f"{address}/v1/acl/policy/{name}", token=management, header="X-Nomad-Token",
              json={"Name": name, "Description": f"caravan {kind} ({environment})", "Rules": rules})
        names.append(name)
    token = _call("POST", f"{address}/v1/acl/token", token=management, header="X-Nomad-Token",
                  json={"Name": f"caravan-{environment}", "Type": "client", "Policies": names})
    print(f"nomad {address}: ACLs bootstrapped; policies {', '.join(names)}; token caravan-{environment}")
    return str(token["SecretID"])


def consul(address: str, environment: str, namespace: str, model: str) -> str:
    """Bootstrap Consul's ACLs, apply caravan's policies, return the pipeline token."""
    management = _call("PUT", f"{address}/v1/acl/bootstrap")["SecretID"]
    texts = load_policies("consul", environment=environment, namespace=namespace, model=model)
    names = {}
    for kind, rules in texts.items():
        name = f"caravan-{environment}-{kind}" + (f"-{model}" if kind == "serving" else "")
        _call("PUT", f"{address}/v1/acl/policy", token=management, header="X-Consul-Token",
              json={"Name": name, "Rules": rules})
        names[kind] = name
    token = _call("PUT", f"{address}/v1/acl/token", token=management, header="X-Consul-Token",
                  json={"Description": f"caravan retrain ({environment})", "Policies": [{"Name": names["pipeline"]}]})
    print(f"consul {address}: ACLs bootstrapped; policies {', '.join(names.values())}; token {names['pipeline']}")
    return str(token["SecretID"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nomad", required=True, help="Nomad HTTP address")
    parser.add_argument("--consul", required=True, help="Consul HTTP address")
    parser.add_argument("--environment", default="dev", help="environment the policies are rendered for")
    parser.add_argument("--namespace", default="default", help="Nomad namespace of the tests' jobs")
    parser.add_argument("--model", default="ranker")
    parser.add_argument("--out", required=True, type=Path, help="env file to write the tokens to (mode 0600)")
    args = parser.parse_args(argv)
    try:
        tokens = {
            "CARAVAN_TEST_NOMAD_TOKEN": nomad(args.nomad.rstrip("/"), args.environment, args.namespace, args.model),
            "CARAVAN_TEST_CONSUL_TOKEN": consul(args.consul.rstrip("/"), args.environment, args.namespace,
                                                args.model),
        }
    except BootstrapError as exc:
        print(f"acl_bootstrap: {exc}", file=sys.stderr)
        return 1
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={value}\n" for name, value in tokens.items())
    print(f"tokens written to {args.out}: {', '.join(tokens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
