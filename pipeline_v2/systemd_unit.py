"""The systemd unit for this install: `pipeline systemd-unit [--user] [--install]`."""

from __future__ import annotations

import getpass
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline_v2.config import Config, DeployStageConfig

UNIT_NAME = "pipeline-v2.service"
WATCHDOG_SEC = 60  # the loop wakes at least once a second and pings at half of this
ENV_FILE = "pipeline.env"


@dataclass(frozen=True)
class UnitPlan:
    """The unit's text, where --install puts it, and the commands that enable it."""

    text: str
    path: Path
    commands: tuple[str, str]


def stop_timeout(config: Config, shutdown_grace: float) -> int:
    """Above the daemon's own stop grace, so systemd never SIGKILLs a clean shutdown."""
    graces = [s.stop_grace_seconds for s in config.stages.values()
              if isinstance(s, DeployStageConfig)]
    return int(shutdown_grace + max(graces, default=0) + 20)


def _is_under_home(path: Path) -> bool:
    return any(path.is_relative_to(home) for home in (Path("/home"), Path("/root"),
                                                      Path("/run/user")))


def workspace_owner(folder: Path) -> str:
    """Who owns the workspace: the daemon runs as them, even when root installs the unit."""
    try:
        return pwd.getpwuid(folder.stat().st_uid).pw_name
    except (KeyError, OSError):
        return getpass.getuser()


def unit_dir(user: bool) -> Path:
    """Where systemd looks for this kind of unit."""
    if user:
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "systemd" / "user"
    return Path("/etc/systemd/system")


def render_unit(config: Config, config_path: Path, user: bool, shutdown_grace: float,
                python: str = sys.executable) -> UnitPlan:
    """The unit for the config at `config_path` run by this interpreter (this venv)."""
    config_path = config_path.resolve()
    workdir = config_path.parent
    places = [workdir, config.state_db_path.parent, config.logs_path]
    storage = config.storage_url
    if storage.startswith("sqlite:///") or "://" not in storage:
        # SQLite readers of a WAL database (and journal readers) need its folder writable.
        places.append(Path(storage.removeprefix("sqlite:///").split("?")[0]).parent)
    writable = sorted({str(p) for p in places})
    lines = [
        "[Unit]",
        "Description=pipeline_v2: Optuna trials through backtest, stress and paper trading",
        "Documentation=https://pypi.org/project/pipeline_v2/",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "# Only the daemon itself may send READY/WATCHDOG/STATUS, not its workers or traders.",
        "NotifyAccess=main",
        f"WatchdogSec={WATCHDOG_SEC}",
        "Restart=on-failure",
        "RestartSec=5",
        "# Stop only the daemon: paper traders run in their own sessions and survive a daemon",
        "# restart; the next daemon re-adopts them (pid, start time, boot id) instead of",
        "# killing and restarting them. `pipeline stop --all` stops traders on purpose.",
        "KillMode=process",
        "# An OOM kill of one trader or stage worker must not take the daemon down with it.",
        "OOMPolicy=continue",
        f"TimeoutStopSec={stop_timeout(config, shutdown_grace)}",
        "# Secrets (PIPELINE_HTTP_TOKEN, webhook URLs) live here, not in the unit. Optional.",
        f"EnvironmentFile=-{workdir / ENV_FILE}",
        "Environment=PYTHONUNBUFFERED=1",
        f"WorkingDirectory={workdir}",
        f"ExecStart={python} -m pipeline_v2 run-daemon --config {config_path}",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ]
    if not user:
        lines.insert(lines.index("Type=notify"), f"User={workspace_owner(workdir)}")
        lines += [
            "# Hardening that leaves the daemon working: it writes only its workspace.",
            "NoNewPrivileges=yes",
            "# It needs no capabilities: its children run as the same user.",
            "CapabilityBoundingSet=",
            "ProtectSystem=strict",
            "PrivateMounts=yes",
            f"ReadWritePaths={' '.join(writable)}",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectKernelLogs=yes",
            "ProtectControlGroups=yes",
            "ProtectClock=yes",
            "ProtectHostname=yes",
            "RestrictSUIDSGID=yes",
            "RestrictRealtime=yes",
            "RestrictNamespaces=yes",
            "LockPersonality=yes",
            "SystemCallArchitectures=native",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "UMask=0027",
        ]
        if not any(_is_under_home(Path(p)) for p in writable):
            lines.append("ProtectHome=read-only")
        if not any(Path(p).is_relative_to(t) for p in writable for t in ("/tmp", "/var/tmp")):
            lines.append("PrivateTmp=yes")  # (a workspace in /tmp would vanish behind it)
    else:
        lines.append("NoNewPrivileges=yes")
    lines += ["", "[Install]", f"WantedBy={'default.target' if user else 'multi-user.target'}",
              ""]
    flag = " --user" if user else ""
    commands = (f"systemctl{flag} daemon-reload", f"systemctl{flag} enable --now {UNIT_NAME}")
    return UnitPlan("\n".join(lines), unit_dir(user) / UNIT_NAME, commands)


def install_unit(plan: UnitPlan) -> Path:
    """Write the unit where systemd finds it."""
    plan.path.parent.mkdir(parents=True, exist_ok=True)
    plan.path.write_text(plan.text, encoding="utf-8")
    return plan.path
