"""supervisord configuration for the local tier and the supervisorctl calls that drive it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from local_tier.layout import Layout
from local_tier.render import Process


def program(name: str, argv: list[str], env: dict[str, str], log: Path, pre_start: str | None = None, priority: int = 100) -> str:
    command = shlex.join(argv)
    if pre_start:
        command = f"/bin/sh -c {shlex.quote(f'{shlex.quote(pre_start)} && exec {command}')}"
    environment = ",".join(f'{k}="{v}"' for k, v in sorted(env.items()))
    lines = [
        f"[program:{name}]",
        f"command={command}",
        f"priority={priority}",
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        "stopasgroup=true",
        "killasgroup=true",
        "stopwaitsecs=10",
        "redirect_stderr=true",
        f"stdout_logfile={log}",
        "stdout_logfile_maxbytes=10MB",
        "stdout_logfile_backups=1",
    ]
    if environment:
        lines.append(f"environment={environment}")
    return "\n".join(lines) + "\n"


def write_config(layout: Layout, processes: list[Process], stand_ins: dict[str, list[str]] | None = None) -> list[str]:
    """Writes supervisord.conf: the stand-ins for what is not here (name -> command: the BBS double,
    the cell), started first, then the jobs' processes; returns the program names in start order."""
    sections = [
        "[unix_http_server]",
        f"file={layout.supervisor_socket}",
        "",
        "[supervisord]",
        f"logfile={layout.logs / 'supervisord.log'}",
        f"pidfile={layout.run / 'supervisord.pid'}",
        f"directory={layout.root}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{layout.supervisor_socket}",
        "",
    ]
    names = []
    for name, command in (stand_ins or {}).items():
        sections.append(program(name, command, {}, layout.logs / name / f"{name}.log", priority=10))
        (layout.logs / name).mkdir(parents=True, exist_ok=True)
        names.append(name)
    for priority, process in enumerate(processes, start=20):
        name = f"{process.job}-{process.name}" if process.name != process.job else process.job
        name = f"{process.group}-{name}" if process.group else name
        log = _root(layout, process) / "sys" / "log" / process.job / f"{process.name}.log"
        sections.append(program(name, process.argv, process.env, log, process.pre_start, priority))
        names.append(name)
    for directory in {
        *(_root(layout, p) / "sys" / "log" / p.job for p in processes),
        *(_root(layout, p) / "data" / p.job for p in processes),
        *(_root(layout, p) / "sys" / "run" / p.job for p in processes),
    }:
        directory.mkdir(parents=True, exist_ok=True)
    layout.supervisor_conf.write_text("\n".join(sections))
    return names


def _root(layout: Layout, process: Process) -> Path:
    """The /var/vcap of a process's instance group: the local root, or another router's (render.py)."""
    return process.root or layout.root


def supervisord(layout: Layout) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(layout.supervisor_conf)], capture_output=True, text=True
    )


def ctl(layout: Layout, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(layout.supervisor_conf), *args],
        capture_output=True,
        text=True,
    )
