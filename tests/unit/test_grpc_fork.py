"""A process with a live gRPC channel starts local steps safely.

grpcio >= 1.80 restarts its poller in forked children, and a ``subprocess.Popen(preexec_fn=...)`` child (the local
executor's, armed with the parent-death signal) of a process with an active channel can abort before it execs
(grpc/grpc#43055): here about 1 child in 100 did, and with fork support forced on this test's script hangs.
``import caravan`` turns gRPC's fork support off unless the environment chose otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHILDREN = 400  # at ~1 % per child with fork support on, 400 children show the abort with ~98 % probability

SCRIPT = textwrap.dedent(f"""
    import subprocess, threading
    from concurrent import futures
    import caravan  # first, as in every caravan process
    import grpc
    from caravan.executors.local import die_with_parent

    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{{port}}")
    done = threading.Event()

    def traffic():
        while not done.is_set():
            try:
                channel.unary_unary("/caravan.test/Nothing")(b"", timeout=0.05)
            except grpc.RpcError:
                pass

    threading.Thread(target=traffic, daemon=True).start()
    codes = [subprocess.run(["/bin/true"], preexec_fn=die_with_parent(), capture_output=True).returncode
             for _ in range({CHILDREN})]
    done.set()
    print(sum(code != 0 for code in codes), sorted(set(codes)))
""")


def test_import_caravan_turns_grpc_fork_support_off_unless_set():
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    probe = "import caravan, os; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "false"
    chosen = subprocess.run([sys.executable, "-c", probe], env={**env, "GRPC_ENABLE_FORK_SUPPORT": "true"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "true", "a user's own setting wins"


def test_local_step_children_of_a_process_with_a_live_channel_never_abort():
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    crashed = result.stdout.strip().splitlines()[-1]
    assert crashed.startswith("0 "), f"children that aborted before exec, and their codes: {crashed}"
