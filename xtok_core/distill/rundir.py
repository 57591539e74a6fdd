"""A run is a directory that survives crashes (formats: see `xtok_core.distill`'s docstring).

Every file that is replaced is written to a temporary name first and moved with `os.replace`
(atomic on POSIX), so a reader never sees half a status or a checkpoint pointer to a half-written
checkpoint. `metrics.jsonl` is append-only, flushed and fsynced per step; on resume, lines after the
checkpoint's step (and a torn last line) are dropped so that no step appears twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ..errors import XtokError

STATES = ("running", "finished", "failed", "stopped")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: "str | Path"):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.metrics_path = self.path / "metrics.jsonl"
        self.status_path = self.path / "status.json"
        self.checkpoints = self.path / "checkpoints"
        self.latest_path = self.checkpoints / "latest"
        self._metrics = None

    # ------------------------------------------------------------ config / status
    def create(self, config: dict) -> None:
        if self.metrics_path.exists() and self.metrics_path.stat().st_size:
            raise XtokError(f"run directory {self.path} already holds a run; pass another --out or continue it with --resume {self.path}")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        self.metrics_path.touch()

    def write_config(self, config: dict) -> None:
        _write_atomic(self.config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

    def read_config(self) -> dict:
        try:
            return json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise XtokError(f"{self.path} is not a run directory (no readable config.json); pass the --out directory of an earlier run") from None

    def write_status(self, state: str, **fields) -> None:
        assert state in STATES
        status = {"state": state, "pid": os.getpid(), "updated": time.time(), **fields}
        _write_atomic(self.status_path, json.dumps(status, sort_keys=True) + "\n")

    def read_status(self) -> dict:
        try:
            return json.loads(self.status_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------ metrics
    def append_metrics(self, row: dict) -> None:
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")
        self._metrics.write(json.dumps(row, sort_keys=True) + "\n")
        self._metrics.flush()
        os.fsync(self._metrics.fileno())

    def read_metrics(self) -> list[dict]:
        """Complete metric lines (a torn last line from a killed process is skipped)."""
        rows = []
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """Keep the lines up to `last_step` (the resumed checkpoint), drop the rest."""
        keep = [r for r in self.read_metrics() if r.get("step", -1) <= last_step]
        _write_atomic(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        extra: "torch.nn.Module | None" = None, keep: int = 2, rng: "dict | None" = None) -> Path:
        """checkpoints/step-N/: model.safetensors, optimizer.safetensors + optimizer.json (scalars),
        rng.safetensors (this process's generators, or `rng` from `gather_rng_states` under DDP),
        w.safetensors (learned W, when the loss has parameters), then `latest`."""
        name = f"step-{step}"
        final = self.checkpoints / name
        tmp = self.checkpoints / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_model(model, str(tmp / "model.safetensors"))
        tensors, meta = _optimizer_to_flat(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(meta, sort_keys=True), encoding="utf-8")
        save_file(rng or rng_state(), str(tmp / "rng.safetensors"))
        if extra is not None and len(extra.state_dict()):
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.state_dict().items()}, str(tmp / "w.safetensors"))
        (tmp / "step.json").write_text(json.dumps({"step": step}), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(self.latest_path, name + "\n")
        self._prune(keep, name)
        return final

    def _prune(self, keep: int, current: str) -> None:
        steps = sorted((int(p.name.split("-")[1]), p) for p in self.checkpoints.glob("step-*") if p.name.split("-")[1].isdigit())
        for _, p in steps[:-keep] if keep > 0 else []:
            if p.name != current:
                shutil.rmtree(p, ignore_errors=True)

    def latest_checkpoint(self) -> "Path | None":
        try:
            name = self.latest_path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        p = self.checkpoints / name
        return p if (p / "step.json").is_file() else None

    def load_checkpoint(self, ckpt: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        extra: "torch.nn.Module | None" = None, rank: int = 0) -> int:
        """Restore model, optimizer, RNG and learned W in place; returns the checkpoint's step."""
        load_model(model, str(ckpt / "model.safetensors"), strict=True)
        meta = json.loads((ckpt / "optimizer.json").read_text(encoding="utf-8"))
        optimizer.load_state_dict(_optimizer_from_flat(load_file(str(ckpt / "optimizer.safetensors")), meta))
        set_rng_state(load_file(str(ckpt / "rng.safetensors")), rank)
        if extra is not None and (ckpt / "w.safetensors").is_file():
            extra.load_state_dict(load_file(str(ckpt / "w.safetensors")))
        return int(json.loads((ckpt / "step.json").read_text())["step"])


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """An optimizer state_dict as (tensors, JSON scalars): no pickle on disk."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> dict:
    """This process's random generators as tensors: torch_cpu, torch_cuda (current device)."""
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["torch_cuda"] = torch.cuda.get_rng_state().cpu()
    return out


def gather_rng_states(world: int, device: torch.device) -> dict:
    """Every rank's generators, keyed `<name>.rank<r>` (a collective: all ranks call it)."""
    import torch.distributed as dist

    out = {}
    for name, state in sorted(rng_state().items()):
        local = state.to(device)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        out.update({f"{name}.rank{r}": p.cpu() for r, p in enumerate(parts)})
    return out


def set_rng_state(states: dict, rank: int = 0) -> None:
    """Restore this rank's generators (its own entries when the checkpoint holds every rank's)."""
    own = {k.rsplit(".rank", 1)[0]: v for k, v in states.items() if k.endswith(f".rank{rank}")} or states
    torch.set_rng_state(own["torch_cpu"])
    if "torch_cuda" in own and torch.cuda.is_available():
        torch.cuda.set_rng_state(own["torch_cuda"])
