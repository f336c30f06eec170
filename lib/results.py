"""Run directories (DESIGN §7): results/<script>/<run-id>/ written whole or not at all."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

from lib.errors import UserError

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformer-lens", "transformers", "numpy", "pandas", "matplotlib", "typer", "scipy")
FLOAT_FORMAT = "%.9g"  # enough digits to recompute, and stable text for byte-identical reruns


def git_commit() -> dict:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "-uno"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class RunDir:
    """A run being written in a hidden staging directory; finish() moves it into place whole."""

    def __init__(self, out: Path, script: str, record: dict, resume: Path | None = None):
        self.script, self.record, self.t0 = script, record, time.time()
        base = Path(out) / script
        self.files: list[str] = []
        if resume is not None:  # continue an interrupted run in place
            resume = Path(resume)
            if not (resume / "checkpoint.json").is_file():
                raise UserError(f"--resume {resume}: not an interrupted run (no checkpoint.json)")
            self.base, self.staging = resume.parent, resume
            self.run_id = resume.name.removesuffix(".interrupted")
            self.files = [p.name for p in resume.iterdir() if not p.name.startswith(".")]
            return
        try:
            base.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            self.run_id = f"{stamp}-{os.getpid()}"
            self.staging = base / f".staging-{self.run_id}"
            self.staging.mkdir()
            probe = self.staging / ".probe"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write results under {out}: {e.strerror or e}") from None
        self.base = base

    @property
    def path(self) -> Path:
        return self.staging

    def csv(self, name: str, df: pd.DataFrame) -> Path:
        path = self.staging / name
        _atomic_write(path, lambda p: df.to_csv(p, index=False, float_format=FLOAT_FORMAT))
        self.files.append(name)
        return path

    def json(self, name: str, obj) -> Path:
        path = self.staging / name
        _atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=1, default=str) + "\n"))
        self.files.append(name)
        return path

    def figure(self, name: str, fig) -> Path:
        import matplotlib.pyplot as plt

        path = self.staging / name
        _atomic_write(path, lambda p: fig.savefig(p, dpi=120, bbox_inches="tight", format="png"))
        plt.close(fig)
        self.files.append(name)
        return path

    def finish(self, **extra) -> Path:
        """Write run.json and move the run into results/<script>/<run-id>/ (never over another run)."""
        record = {
            "script": self.script,
            "run_id": self.run_id,
            "argv": sys.argv,
            **self.record,
            **extra,
            "versions": versions(),
            "git": git_commit(),
            "started_utc": datetime.fromtimestamp(self.t0, timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self.t0, 3),
            "files": sorted(self.files),
        }
        self.json("run.json", record)
        (self.staging / "checkpoint.json").unlink(missing_ok=True)
        if "checkpoint.json" in self.files:
            self.files.remove("checkpoint.json")
        for suffix in [""] + [f"-{i}" for i in range(2, 1000)]:
            final = self.base / f"{self.run_id}{suffix}"
            try:
                final.mkdir()  # claims the name; fails if another run already has it
            except FileExistsError:
                continue
            os.replace(self.staging, final)  # replaces the empty claimed directory in one step
            return final
        raise UserError(f"no free run directory name under {self.base}")

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def suspend(self) -> Path:
        """Keep an interrupted run's finished work as results/<script>/<run-id>.interrupted/."""
        target = self.base / f"{self.run_id}.interrupted"
        if self.staging != target:
            os.replace(self.staging, target)
            self.staging = target
        return target
