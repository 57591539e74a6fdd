"""Distillation runs seen from the app: launch `xtok distill` in the background, follow, stop, list.

A run is the directory the CLI writes (`config.json`, `metrics.jsonl`, `status.json`, checkpoints).
The app adds `launch.json` (process id and command) and `app.log` (the process's output), so that a
browser that was closed and reopened, or another browser, finds the run and can stop it. The process
runs in its own session (process group): closing the page or restarting the app does not end it, and
stop sends SIGTERM to the whole group (the CLI checkpoints and marks the run `stopped`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from xtok_core.distill.rundir import RunDir

RUNS_ENV = "XTOK_RUNS_DIR"
TERMINAL = ("finished", "failed", "stopped")


def runs_dir() -> Path:
    """Where runs live: `$XTOK_RUNS_DIR`, else `~/.local/share/xtok/runs` (`$XDG_DATA_HOME/xtok/runs`).
    Never inside the app's folder: Streamlit's file watcher would watch every checkpoint written."""
    if os.environ.get(RUNS_ENV):
        return Path(os.environ[RUNS_ENV]).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data).expanduser() / "xtok" / "runs"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    """True while `pid` runs; reaps it if it is our exited child (else it would linger as a zombie)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    except OSError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child of another process stays a zombie until reaped: not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Run:
    path: Path
    status: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    launch: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def pid(self) -> int | None:
        return self.launch.get("pid") or self.status.get("pid")

    @property
    def state(self) -> str:
        """running / finished / failed / stopped, `starting` before the CLI wrote its status, and
        `ended` for a process that is gone without saying how (killed)."""
        s = self.status.get("state") or self.status.get("status")
        launched, wrote = self.launch.get("pid"), self.status.get("pid")
        if launched and wrote and int(launched) != int(wrote):
            # status.json is the previous process's (a resumed run before the new one wrote its own):
            # the launched process decides, else a resumed run would read `stopped` until its first step
            s = None
        if s in TERMINAL:
            return s
        alive = self.pid is not None and _alive(int(self.pid))
        if alive:
            return s or "starting"
        return "ended" if self.pid is not None or s else "unknown"

    @property
    def running(self) -> bool:
        return self.state in ("running", "starting")

    @property
    def error(self) -> str:
        return str(self.status.get("error") or "")

    def setting(self, name: str):
        """A run setting from config.json, or from the launch command before the CLI wrote its config."""
        if name in self.config:
            return self.config[name]
        cmd = self.launch.get("command") or []
        flag = "--" + name.replace("_", "-")
        values = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == flag]
        return (values if name == "teachers" else values[0]) if values else None

    def metrics(self) -> list[dict]:
        return RunDir(self.path).read_metrics()

    @property
    def resumable(self) -> bool:
        """Stopped, failed or killed with a checkpoint to continue from (`xtok distill --resume`)."""
        return not self.running and self.state != "finished" and RunDir(self.path).latest_checkpoint() is not None

    def log_tail(self, n: int = 12) -> str:
        try:
            return "\n".join((self.path / "app.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def load_run(path: Path) -> Run:
    path = Path(path)
    rd = RunDir(path)
    config = _read_json(rd.config_path) or _read_json(path / REQUEST)  # before the CLI wrote config.json
    return Run(path, rd.read_status(), config, _read_json(path / "launch.json"))


def list_runs(root: Path | None = None) -> list[Run]:
    """Runs under `root`, newest first."""
    root = Path(root or runs_dir())
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and any((p / f).exists() for f in ("launch.json", "status.json", "config.json"))]
    return [load_run(p) for p in sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)]


def new_run_dir(label: str, root: Path | None = None) -> Path:
    root = Path(root or runs_dir())
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", label).strip("-")[:60] or "run"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / f"{stamp}-{slug}", 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{slug}-{n}"
    return path


def launch_run(distill_args: list[str], out: Path, *, resume: bool = False) -> Run:
    """Start `python -m xtok_core distill <distill_args> --out <out>` (or `--resume <out>`) in its own
    process group."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "xtok_core", "distill", *map(str, distill_args), "--resume" if resume else "--out", str(out)]
    spawn(cmd, out)
    return load_run(out)


def spawn(cmd: list[str], out: Path) -> dict:
    """Start `cmd` in its own process group with its output appended to `out/app.log`, and record its pid
    and command in `out/launch.json` (replacing an earlier launch's). Returns that record."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    (out / "launch.json").unlink(missing_ok=True)  # an earlier launch's pid is gone; the new one follows
    with open(out / "app.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, close_fds=True)
    launch = {"pid": proc.pid, "command": cmd, "started": time.time()}
    tmp = out / "launch.json.tmp"
    tmp.write_text(json.dumps(launch, indent=1))
    os.replace(tmp, out / "launch.json")
    # The Popen object is dropped on purpose: liveness is checked by pid (see `_alive`), which also
    # works after the app restarted.
    return launch


FIELD_PREFIX = "cfg_"


def widget_config(values: dict) -> dict:
    """DistillConfig fields from the Distill page's widgets keyed `cfg_<field>`: each holds its field's value
    (a 0 in the teacher top-k box means off, None)."""
    out = {}
    for key, value in values.items():
        if str(key).startswith(FIELD_PREFIX):
            name = str(key)[len(FIELD_PREFIX):]
            out[name] = None if name == "teacher_topk" and not value else value
    return out


REQUEST = "request.json"  # the DistillConfig the page wrote; the CLI's config.json follows it


def launch_config(config, out: Path) -> Run:
    """Write `config` (a DistillConfig) into the run directory and start `xtok distill --config FILE --out DIR`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REQUEST).write_text(config.to_json() + "\n", encoding="utf-8")
    return launch_run(["--config", str(out / REQUEST), "--no-progress"], out)


def stop_run(run: Run) -> bool:
    """SIGTERM to the run's process group; False if it was not running."""
    pid = run.pid
    if pid is None or not _alive(int(pid)):
        return False
    try:
        os.killpg(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
