"""The client node: runs tasks as subprocesses with restart policies and kills them (``client/``)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from contextlib import nullcontext
from typing import Any

from caravan.executors.memory import MemoryWatch  # the same watch as the local executor: a cgroup's memory.max

from .common import (
    ENV_UNSAFE,
    MAX_EVENTS,
    REGION,
    ZERO_TIME,
    AllocRec,
    TaskRun,
    interpolate,
    now_ns,
    rfc3339,
    send_signal,
)
from .hcl import format_duration
from .ports import port_env


class Client:
    """The client node (a mixin of :class:`NomadDouble`)."""

    def _task_event(self, rec: AllocRec, task: str, kind: str, message: str, idx: int,
                    **fields: Any) -> None:
        state = rec.alloc["TaskStates"][task]
        event = {"Type": kind, "Time": now_ns(), "DisplayMessage": message, "Details": {}, "Message": "",
                 "FailsTask": False, "RestartReason": "", "SetupError": "", "DriverError": "",
                 "DriverMessage": "",
                 "ExitCode": 0, "Signal": 0, "KillReason": "", "KillTimeout": 0, "KillError": "",
                 "StartDelay": 0, "DownloadError": "", "ValidationError": "", "FailedSibling": "",
                 "VaultError": "", "TaskSignalReason": "", "TaskSignal": "", "GenericSource": ""}
        details = fields.pop("Details", {})
        event.update(fields)
        event["Details"] = {k: str(v) for k, v in details.items()}
        state["Events"] = (state["Events"] + [event])[-MAX_EVENTS:]
        self._update_alloc(rec, idx)

    def _set_task(self, rec: AllocRec, task: str, idx: int, **fields: Any) -> None:
        """Update a task's state and the alloc's client status, as the client's alloc runner reports it."""
        rec.alloc["TaskStates"][task].update(fields)
        states = rec.alloc["TaskStates"].values()
        if rec.lost:
            status, description = rec.alloc["ClientStatus"], rec.alloc["ClientDescription"]
        elif any(s["State"] == "running" for s in states):
            status, description = "running", "Tasks are running"
        elif any(s["State"] == "pending" for s in states):
            status, description = "pending", "No tasks have started"
        elif any(s["Failed"] for s in states):
            status, description = "failed", "Failed tasks"
        else:
            status, description = "complete", "All tasks have completed"
        was = rec.alloc["ClientStatus"]
        self._update_alloc(rec, idx, ClientStatus=status, ClientDescription=description)
        if status == "failed" and was != "failed":
            self._reschedule(rec, idx)

    def _run_task(self, rec: AllocRec, run: TaskRun) -> None:
        """One task on the client: set up its directory, run it, restart it per its RestartPolicy."""
        task, policy = run.name, run.spec["RestartPolicy"]
        task_dir = rec.root / task
        for folder in (rec.root / "alloc" / "logs", rec.root / "alloc" / "data", rec.root / "alloc" / "tmp",
                       task_dir / "local", task_dir / "secrets", task_dir / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        with self._cond:
            if rec.alloc["TaskStates"] is None:
                rec.alloc["TaskStates"] = {}
            rec.alloc["TaskStates"][task] = {"State": "pending", "Failed": False, "Restarts": 0,
                                             "LastRestart": ZERO_TIME, "StartedAt": ZERO_TIME,
                                             "FinishedAt": ZERO_TIME, "Events": [], "TaskHandle": None}
            self._task_event(rec, task, "Received", "Task received by client", self._bump())
            self._task_event(rec, task, "Task Setup", "Building Task Directory", self._bump(),
                             Message="Building Task Directory")
            payload = rec.job.get("Payload")
            if run.spec.get("DispatchPayload") and payload:
                target = task_dir / "local" / run.spec["DispatchPayload"]["File"]
                target.write_bytes(base64.b64decode(payload))
            self._cond.notify_all()
        if not self._prepare_secrets(rec, run):
            return
        window_start, restarts_in_window = time.monotonic(), 0
        while True:
            if rec.kill.is_set() or self._closing.is_set() or rec.lost:
                with self._cond:
                    self._finish_killed(rec, run, None)
                return
            code, sig = self._execute(rec, run)
            with self._cond:
                if rec.lost or self._closing.is_set():
                    return  # the node is gone: nothing more is ever reported for this alloc
                idx = self._bump()
                if code is not None and run.oom_killed:
                    # drivers/docker/handle.go: an OOM-killed container exits 137 with err "OOM Killed";
                    # task_runner.go emitExitResultEvent -> SetOOMKilled, SetExitMessage (Message and Details).
                    self._task_event(rec, task, "Terminated", f'Exit Code: {code}, Exit Message: "OOM Killed"', idx,
                                     ExitCode=code, Message="OOM Killed",
                                     Details={"exit_code": code, "signal": 0, "oom_killed": "true",
                                              "exit_message": "OOM Killed"})
                elif code is not None:
                    text = f"Exit Code: {code}" + (f", Signal: {sig}" if sig else "")
                    self._task_event(rec, task, "Terminated", text, idx, ExitCode=code, Signal=sig,
                                     Details={"exit_code": code, "signal": sig, "oom_killed": "false"})
                if rec.kill.is_set():
                    self._finish_killed(rec, run, idx)
                    return
                if code == 0:
                    self._set_task(rec, task, idx, State="dead", FinishedAt=rfc3339(now_ns()))
                    self._cond.notify_all()
                    return
                restart, delay_ns, reason, window_start, restarts_in_window = restart_decision(
                    policy, window_start, restarts_in_window)
                if not restart:
                    details = {"fails_task": "true", "restart_reason": reason}
                    self._task_event(rec, task, "Not Restarting", reason, idx, FailsTask=True,
                                     RestartReason=reason, Details=details)
                    self._set_task(rec, task, idx, State="dead", Failed=True, FinishedAt=rfc3339(now_ns()))
                    if any(other is not run and not other.exited.is_set() for other in rec.tasks.values()):
                        self._start(self._kill_alloc, rec)  # a failed task takes its siblings down
                    self._cond.notify_all()
                    return
                message = f"Task restarting in {format_duration(delay_ns)}"
                details = {"restart_reason": reason, "start_delay": delay_ns}
                self._task_event(rec, task, "Restarting", message, idx, RestartReason=reason,
                                 StartDelay=delay_ns, Details=details)
                state = rec.alloc["TaskStates"][task]
                self._set_task(rec, task, idx, State="pending", Restarts=state["Restarts"] + 1,
                               LastRestart=rfc3339(now_ns()))
                self._cond.notify_all()
            rec.kill.wait(delay_ns / 1e9)

    def _execute(self, rec: AllocRec, run: TaskRun) -> tuple[int | None, int]:
        """Start the task's process and wait for it; (exit code, signal), or (None, 0) if it did not start."""
        logs = rec.root / "alloc" / "logs"
        with self._cond:
            argv, env = self._command(rec, run)
        run.exited.clear()
        try:
            with open(logs / f"{run.name}.stdout.0", "ab") as out, \
                    open(logs / f"{run.name}.stderr.0", "ab") as err:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                        cwd=rec.root / run.name, start_new_session=True)
        except (OSError, ValueError) as exc:
            with self._cond:
                message = f"failed to launch command with executor: {exc}"
                self._task_event(rec, run.name, "Driver Failure", message, self._bump(), DriverError=message)
                self._cond.notify_all()
            return None, 0
        with self._cond:
            run.proc = proc
            if self._closing.is_set():  # stop() ran while this process was starting
                send_signal(proc, signal.SIGKILL)
            self.stats["processes_started"] += 1
            self._leader_event("running")
            idx = self._bump()
            self._task_event(rec, run.name, "Started", "Task started by client", idx)
            self._set_task(rec, run.name, idx, State="running", StartedAt=rfc3339(now_ns()))
            killed_meanwhile = rec.kill.is_set()
            self._cond.notify_all()
        if killed_meanwhile:
            self._start(self._kill_alloc, rec)
        if rec.fault == "lose":
            self._start(self._lose, rec)
        # The docker and exec drivers put the task in a cgroup whose memory.max is its MemoryMB (MemoryMaxMB
        # when set): the kernel OOM-kills it above that. raw_exec does not limit memory.
        limit = int(run.spec["Resources"].get("MemoryMaxMB") or run.spec["Resources"]["MemoryMB"])
        with MemoryWatch(proc.pid, limit) if run.spec.get("Driver") in ("docker", "exec") else nullcontext() as watch:
            returncode = proc.wait()
        run.oom_killed = watch is not None and watch.exceeded_mb is not None
        run.exited.set()
        if run.oom_killed:
            return 137, 0  # Docker reports the container's exit status, 128 + SIGKILL, and no signal
        return (128 - returncode, -returncode) if returncode < 0 else (returncode, 0)

    def _environment(self, rec: AllocRec,
                     run: TaskRun) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """(the runtime ``NOMAD_*`` variables, the task's ``env`` block interpolated, the interpolation view)."""
        job, group, task = rec.job, rec.group, run.spec
        node = rec.node or self._nodes[0]
        alloc_dir, task_dir = rec.root / "alloc", rec.root / run.name
        name = rec.alloc["Name"]
        runtime = {
            "NOMAD_ALLOC_DIR": str(alloc_dir), "NOMAD_TASK_DIR": str(task_dir / "local"),
            "NOMAD_SECRETS_DIR": str(task_dir / "secrets"), "NOMAD_ALLOC_ID": rec.alloc["ID"],
            "NOMAD_SHORT_ALLOC_ID": rec.alloc["ID"][:8], "NOMAD_ALLOC_NAME": name,
            "NOMAD_ALLOC_INDEX": name[name.rindex("[") + 1:-1], "NOMAD_GROUP_NAME": group["Name"],
            "NOMAD_TASK_NAME": run.name, "NOMAD_JOB_ID": job["ID"], "NOMAD_JOB_NAME": job["Name"],
            "NOMAD_NAMESPACE": job["Namespace"], "NOMAD_REGION": REGION, "NOMAD_DC": node["Datacenter"],
            "NOMAD_CPU_LIMIT": str(task["Resources"]["CPU"]),
            "NOMAD_MEMORY_LIMIT": str(task["Resources"]["MemoryMB"]),
        }
        if job["ParentID"]:
            runtime["NOMAD_JOB_PARENT_ID"] = job["ParentID"]
        runtime.update(port_env(rec.alloc))  # ports.py
        meta = {**(job.get("Meta") or {}), **(group.get("Meta") or {}), **(task.get("Meta") or {})}
        for key, value in meta.items():
            clean = ENV_UNSAFE.sub("_", key)
            runtime[f"NOMAD_META_{clean}"] = runtime[f"NOMAD_META_{clean.upper()}"] = value
        view = {**runtime, "node.unique.id": node["ID"], "node.unique.name": node["Name"],
                "node.datacenter": node["Datacenter"], "node.class": node["NodeClass"],
                "node.pool": node["NodePool"], "node.region": REGION,
                **{f"attr.{k}": v for k, v in node["Attributes"].items()},
                **{f"meta.{k}": v for k, v in node["Meta"].items()}}
        task_env = {k: interpolate(str(v), view) for k, v in (task.get("Env") or {}).items()}
        view.update(task_env)
        return runtime, task_env, view

    def _command(self, rec: AllocRec, run: TaskRun) -> tuple[list[str], dict[str, str]]:
        """The argv and environment Nomad's client would give the task."""
        runtime, task_env, view = self._environment(rec, run)
        view.update(run.template_env)
        base = os.environ if self.inherit_env else \
            {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        env = {**base, **self.env, **task_env, **run.template_env, **runtime, **self._vault_env(run.spec)}
        config = run.spec.get("Config") or {}
        if rec.fault in ("hang", "lose"):
            return [self.python, "-c", "import time\nwhile True:\n    time.sleep(60)"], env
        if rec.fault == "fail":
            fail = "import sys; sys.stderr.write('injected failure\\n'); sys.exit(3)"
            return [self.python, "-c", fail], env
        command = interpolate(str(config.get("command") or ""), view)
        if os.path.basename(command) in ("python", "python3"):
            command = self.python
        return [command, *(interpolate(str(a), view) for a in config.get("args") or [])], env

    def _finish_killed(self, rec: AllocRec, run: TaskRun, idx: int | None) -> None:
        idx = idx or self._bump()
        self._task_event(rec, run.name, "Killed", "Task successfully killed", idx)
        self._set_task(rec, run.name, idx, State="dead", FinishedAt=rfc3339(now_ns()))
        self._cond.notify_all()

    def _kill_alloc(self, rec: AllocRec) -> None:
        """Stop an alloc's tasks: Killing, SIGTERM to the process group, SIGKILL after the kill timeout."""
        rec.kill.set()
        live = []
        with self._cond:
            for run in rec.tasks.values():
                if run.proc is not None and run.proc.poll() is None and not run.exited.is_set():
                    timeout_s = min(run.spec["KillTimeout"] / 1e9, self.kill_timeout_s)
                    timeout = format_duration(int(timeout_s * 1e9))
                    message = f"Sent interrupt. Waiting {timeout} before force killing"
                    self._task_event(rec, run.name, "Killing", message, self._bump(),
                                     KillTimeout=int(timeout_s * 1e9), Details={"kill_timeout": timeout})
                    live.append((run, timeout_s))
            self._cond.notify_all()
        for run, timeout_s in live:
            send_signal(run.proc, signal.SIGTERM)
            if not run.exited.wait(timeout_s):
                send_signal(run.proc, signal.SIGKILL)


def restart_decision(policy: dict[str, Any], window_start: float,
                      count: int) -> tuple[bool, int, str, float, int]:
    """client/allocrunner/taskrunner/restarts: (restart?, delay ns, reason, window start, count)."""
    attempts, interval_ns, delay_ns = policy["Attempts"], policy["Interval"], policy["Delay"]
    if attempts == 0:
        return False, 0, "Policy allows no restarts", window_start, count
    now = time.monotonic()
    if interval_ns and now > window_start + interval_ns / 1e9:
        return True, delay_ns, "Restart within policy", now, 0
    count += 1
    if count <= attempts:
        return True, delay_ns, "Restart within policy", window_start, count
    if policy["Mode"] == "fail":
        reason = (f"Exceeded allowed attempts {attempts} in interval {format_duration(interval_ns)} "
                  f'and mode is "fail"')
        return False, 0, reason, window_start, count
    wait_ns = max(0, int((window_start + interval_ns / 1e9 - now) * 1e9))
    return True, wait_ns, "Exceeded allowed attempts, applying a delay", window_start, count
