"""Run directories (results/README.md): results/<script>/<run-id>/ written whole or not at all."""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from lib.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]
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
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def atomic_write(path: Path, write) -> None:
    """write(tmp) to a hidden temporary name beside path, then move it into place in one step."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def probe_writable(directory: Path) -> None:
    """Raise OSError now, rather than at the first result, when files cannot be created in directory."""
    probe = Path(directory) / ".probe"
    probe.write_text("")
    probe.unlink()


CHECKPOINT = "checkpoint.json"  # in a staged or interrupted run: the script, its argv and the run record
UNITS = ".units"  # finished units of work (one pickle per task, or per task x threshold)


def read_checkpoint(where: Path, script: str | None = None) -> dict:
    """The checkpoint of an interrupted run directory, validated; a UserError names what is wrong."""
    where = Path(where)
    if not where.is_dir():
        raise UserError(f"--resume {where}: no such run directory")
    try:
        saved = json.loads((where / CHECKPOINT).read_text())
    except FileNotFoundError:
        raise UserError(f"--resume {where}: not an interrupted run (no {CHECKPOINT})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--resume {where}: unreadable {CHECKPOINT} ({e})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("argv"), list) or "script" not in saved:
        raise UserError(f"--resume {where}: {CHECKPOINT} is not a checkpoint of this suite")
    if script is not None and saved["script"] != script:
        raise UserError(f"--resume {where}: that run is of {saved['script']}, not {script}")
    return saved


def run_id_of(path: Path) -> str:
    """The visible run id of a staged (.staging-<id>) or interrupted (<id>.interrupted) directory."""
    return path.name.removeprefix(".staging-").removesuffix(".interrupted")


class RunDir:
    """A run being written in a hidden staging directory; finish() moves it into place whole.

    Finished units of work are checkpointed in the staging directory as they complete; an interrupted
    run is kept as <run-id>.interrupted (a killed one stays in .staging-<run-id>), and either can be
    resumed, finishing into results/<script>/<run-id>/."""

    def __init__(self, out: Path, script: str, record: dict, argv: list[str], resume: Path | None = None):
        self.script, self.record, self.t0 = script, record, time.time()
        self.files: list[str] = []
        self.created: list[Path] = []  # directories this run made (removed again if it fails)
        if resume is not None:  # continue an interrupted run in place
            resume = Path(resume)
            saved = read_checkpoint(resume, script)
            self.base, self.staging, self.run_id = resume.parent, resume, run_id_of(resume)
            self.record = {**record, **saved.get("record", {}), "options": record["options"]}
            self.record.setdefault("resumed", []).append(datetime.now(UTC).isoformat(timespec="seconds"))
            self.argv = saved["argv"]
            self.files = [p.name for p in resume.iterdir() if not p.name.startswith(".") and p.name != CHECKPOINT]
            return
        base = Path(out) / script
        try:
            missing = [d for d in [base, *base.parents] if not d.exists()]
            base.mkdir(parents=True, exist_ok=True)
            self.created = missing  # deepest first
            stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
            self.run_id = f"{stamp}-{os.getpid()}"
            self.staging = base / f".staging-{self.run_id}"
            self.staging.mkdir()
            probe_writable(self.staging)
        except (OSError, ValueError) as e:
            self._remove_created()
            raise UserError(f"cannot write results under {out}: {getattr(e, 'strerror', None) or e}") from None
        self.base, self.argv = base, list(argv)
        self.save_checkpoint()

    @property
    def path(self) -> Path:
        return self.staging

    def save_checkpoint(self) -> None:
        """Write what --resume needs: the script, its argv and the record so far."""
        obj = {"script": self.script, "argv": self.argv, "run_id": self.run_id, "record": self.record}
        atomic_write(self.staging / CHECKPOINT, lambda p: p.write_text(json.dumps(obj, indent=1, default=str) + "\n"))

    def unit(self, key: str):
        """A finished unit of work saved by save_unit (None if there is none)."""
        path = self.staging / UNITS / f"{key}.pkl"
        return pickle.loads(path.read_bytes()) if path.is_file() else None

    def save_unit(self, key: str, value) -> None:
        """Checkpoint a unit of work (and the run record with it); a resumed run gets it from unit()."""
        (self.staging / UNITS).mkdir(exist_ok=True)
        atomic_write(self.staging / UNITS / f"{key}.pkl", lambda p: p.write_bytes(pickle.dumps(value)))
        self.save_checkpoint()

    def has_work(self) -> bool:
        return (self.staging / UNITS).is_dir() and any((self.staging / UNITS).iterdir())

    def csv(self, name: str, df) -> Path:  # a pandas DataFrame
        path = self.staging / name
        atomic_write(path, lambda p: df.to_csv(p, index=False, float_format=FLOAT_FORMAT))
        self.files.append(name)
        return path

    def json(self, name: str, obj) -> Path:
        path = self.staging / name
        atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=1, default=str) + "\n"))
        self.files.append(name)
        return path

    def text(self, name: str, text: str) -> Path:
        path = self.staging / name
        atomic_write(path, lambda p: p.write_text(text))
        self.files.append(name)
        return path

    def figure(self, name: str, fig) -> Path:
        import matplotlib.pyplot as plt

        path = self.staging / name
        atomic_write(path, lambda p: fig.savefig(p, dpi=120, bbox_inches="tight", format="png"))
        plt.close(fig)
        self.files.append(name)
        return path

    def finish(self, **extra) -> Path:
        """Write run.json and move the run into results/<script>/<run-id>/ (never over another run)."""
        record = {
            "script": self.script,
            "run_id": self.run_id,
            "argv": self.argv,
            **self.record,
            **extra,
            "versions": versions(),
            "git": git_commit(),
            "started_utc": datetime.fromtimestamp(self.t0, UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self.t0, 3),
            "files": sorted(set(self.files) | {"run.json"}),
        }
        self.json("run.json", record)
        (self.staging / CHECKPOINT).unlink(missing_ok=True)
        shutil.rmtree(self.staging / UNITS, ignore_errors=True)
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
        """Remove the staged run and any directory it created (a failed run leaves nothing behind)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self._remove_created()

    def _remove_created(self) -> None:
        for d in self.created:
            try:
                d.rmdir()  # only if empty: another run may have written there meanwhile
            except OSError:
                break

    def suspend(self) -> Path | None:
        """Keep an interrupted run's finished work as results/<script>/<run-id>.interrupted/ (None, and
        nothing kept, when no unit of work had finished)."""
        if not self.has_work():
            if not self.staging.name.endswith(".interrupted"):
                self.abort()
            return None
        target = self.base / f"{self.run_id}.interrupted"
        if self.staging != target:
            os.replace(self.staging, target)
            self.staging = target
        return target
