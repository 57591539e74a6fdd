"""Teacher caches seen from the app: build `xtok teacher-cache` in the background, follow its progress, list.

A cache lives in `<runs directory>/caches/<name>/`: what the CLI writes (`manifest.json`, the shards,
`progress.json`) plus the app's `launch.json` (pid and command) and `app.log` (the process's output), as for
runs (`xtok_app.runs`). The page builds caches of the generated corpus (the data of the page's runs) with the
run defaults for the corpus, so any run the page launches on the same teacher can train from one.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from xtok_app import runs
from xtok_core.teacher_cache import MANIFEST, PROGRESS


def caches_dir() -> Path:
    return runs.runs_dir() / "caches"


@dataclass
class Cache:
    path: Path
    manifest: dict = field(default_factory=dict)
    progress: dict = field(default_factory=dict)
    launch: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def building(self) -> bool:
        pid = self.launch.get("pid")
        return not self.complete and pid is not None and runs._alive(int(pid))

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def state(self) -> str:
        """complete / building / failed (the process is gone and the cache is not complete)."""
        if self.complete:
            return "complete"
        if self.building:
            return "building"
        return "failed"

    @property
    def done(self) -> int:
        return int(self.progress.get("done", 0))

    @property
    def total(self) -> int | None:
        return self.progress.get("total") or self.manifest.get("n_examples")

    @property
    def fraction(self) -> float:
        return 1.0 if self.complete else (self.done / self.total if self.total else 0.0)

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left at the build's rate so far (None before the first batch)."""
        p = self.progress
        n = self.done - int(p.get("resumed_from", 0))
        if not self.building or n <= 0 or not self.total:
            return None
        rate = (float(p["updated"]) - float(p["started"])) / n
        return max(0.0, rate * (self.total - self.done) - ((now or time.time()) - float(p["updated"])))

    @property
    def error(self) -> str:
        """One line: why a failed build stopped (its progress file, else the last line of its output)."""
        if self.state != "failed":
            return ""
        if self.progress.get("error"):
            return str(self.progress["error"])
        lines = [ln.strip() for ln in self.log_tail(40).splitlines() if ln.strip()]
        said = [ln for ln in lines if ln.startswith("xtok teacher-cache: error:")]
        if said:
            return said[-1]
        if any(ln.startswith("Traceback") for ln in lines):
            return lines[-1]
        if self.progress:
            return (f"the build ended at {self.done:,} / {self.total} examples without an error (killed?); resume it "
                    "to go on from its complete shards")
        return lines[-1] if lines else "the build ended before it wrote anything (killed?)"

    def setting(self, name: str):
        """`teacher`, `top_k`, ... from the manifest, or from the launch command before the first shard."""
        if name in self.manifest:
            return self.manifest[name]
        cmd = self.launch.get("command") or []
        flag = "--" + name.replace("_", "-")
        return next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == flag), None)

    def bytes_per_token(self) -> float | None:
        shards = self.manifest.get("shards") or []
        tokens = sum(s["tokens"] for s in shards)
        return sum(s["bytes"] for s in shards) / tokens if tokens else None

    def log_tail(self, n: int = 12) -> str:
        try:
            return "\n".join((self.path / "app.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def load_cache(path: Path) -> Cache:
    path = Path(path)
    return Cache(path, runs._read_json(path / MANIFEST), runs._read_json(path / PROGRESS),
                 runs._read_json(path / "launch.json"))


def list_caches(root: Path | None = None) -> list[Cache]:
    """Caches under `root` (default `caches_dir()`), newest first."""
    root = Path(root or caches_dir())
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and any((p / f).exists() for f in ("launch.json", MANIFEST))]
    return [load_cache(p) for p in sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)]


def cache_name(teacher: str, top_k: int) -> str:
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "-", teacher.replace("tiny:", "tiny-")).strip("-")[:40] or "teacher"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-k{int(top_k)}"


def launch_cache(teacher: str, *, top_k: int, max_length: int, batch_size: int, corpus_lines: int,
                 name: str | None = None, root: Path | None = None) -> Cache:
    """Start `xtok teacher-cache` for `teacher` over the generated corpus of `corpus_lines` lines (the other
    corpus settings are the run defaults) in the background."""
    out = Path(root or caches_dir()) / (name or cache_name(teacher, top_k))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "xtok_core", "teacher-cache", "--teacher", teacher, "--top-k", str(int(top_k)),
           "--max-length", str(int(max_length)), "--batch-size", str(int(batch_size)), "--corpus-lines",
           str(int(corpus_lines)), "--out", str(out), "--no-progress"]
    runs.spawn(cmd, out)
    return load_cache(out)


def resume_cache(cache: Cache) -> Cache:
    """Run a failed or interrupted build's command again: the CLI keeps the complete shards and goes on."""
    runs.spawn(list(cache.launch["command"]), cache.path)
    return load_cache(cache.path)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    m, s = divmod(int(round(seconds)), 60)
    return f"about {m} min {s:02d} s left" if m else f"about {s} s left"


__all__ = ["Cache", "caches_dir", "list_caches", "load_cache", "launch_cache", "resume_cache", "format_eta",
           "cache_name"]
