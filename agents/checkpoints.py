"""The files of a training run: checkpoints written atomically and listed with their SHA-256 in
``checkpoints/manifest.json`` (only those are ever loaded: SB3 zips and pickles run code), and
the evaluations file ``evaluations.jsonl``."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["MANIFEST", "atomic_write", "latest_checkpoint", "read_evaluations", "read_manifest",
           "save_checkpoint", "truncate_evaluations", "trusted_checkpoints", "write_manifest",
           "write_text"]

MANIFEST = "manifest.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file in ``path``'s folder (same suffix, so SB3 does not
    add one), fsync it, then ``os.replace`` it onto ``path``: a crash leaves either the old
    file or the new one, never half of one."""
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.",
                               suffix=os.path.splitext(name)[1])
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def read_manifest(run_dir: str) -> dict[str, Any]:
    """``checkpoints/manifest.json`` (``{"checkpoints": {file: {...}}}``; empty if absent or
    unreadable)."""
    path = os.path.join(run_dir, "checkpoints", MANIFEST)
    try:
        with open(path) as f:
            man = json.load(f)
    except (OSError, ValueError):
        return {"checkpoints": {}}
    if not isinstance(man, dict) or not isinstance(man.get("checkpoints"), dict):
        return {"checkpoints": {}}
    return man


def write_manifest(run_dir: str, man: dict[str, Any]) -> None:
    write_text(os.path.join(run_dir, "checkpoints", MANIFEST), json.dumps(man, indent=1))


def save_checkpoint(model: Any, run_dir: str, algo: str) -> str:
    """Write ``model_<steps>_steps.zip`` (and ``model_replay_buffer_<steps>_steps.pkl`` for
    SAC/TD3) atomically, then list them with their SHA-256 in the manifest; returns the path."""
    folder = os.path.join(run_dir, "checkpoints")
    steps = int(model.num_timesteps)
    entry: dict[str, Any] = {"steps": steps, "algo": algo}
    if getattr(model, "replay_buffer", None) is not None:
        buf = os.path.join(folder, f"model_replay_buffer_{steps}_steps.pkl")
        atomic_write(buf, model.save_replay_buffer)
        entry["replay_buffer"] = {"file": os.path.basename(buf), "sha256": _sha256(buf)}
    path = os.path.join(folder, f"model_{steps}_steps.zip")
    atomic_write(path, model.save)
    entry["sha256"] = _sha256(path)
    man = read_manifest(run_dir)
    man["checkpoints"][os.path.basename(path)] = entry
    write_manifest(run_dir, man)
    return path


def trusted_checkpoints(run_dir: str, algo: str | None = None) -> list[dict[str, Any]]:
    """The checkpoints this run wrote, newest first: those listed in the manifest (for
    ``algo``) whose files exist and match their SHA-256. Each is ``{"path", "steps",
    "replay_buffer"}`` (the buffer's path or ``None``). Anything else in the folder is
    ignored: SB3 zips and pickles run code when loaded."""
    folder = os.path.join(run_dir, "checkpoints")
    out = []
    for name, e in read_manifest(run_dir)["checkpoints"].items():
        try:
            if os.path.basename(name) != name or (algo is not None and e.get("algo") != algo):
                continue
            path = os.path.join(folder, name)
            if not os.path.isfile(path) or _sha256(path) != e["sha256"]:
                warnings.warn(f"checkpoint {path} is missing or does not match its hash in "
                              f"{MANIFEST}; not loading it", RuntimeWarning, stacklevel=2)
                continue
            buf = None
            if e.get("replay_buffer") is not None:
                bname = e["replay_buffer"]["file"]
                buf = os.path.join(folder, bname)
                if (os.path.basename(bname) != bname or not os.path.isfile(buf)
                        or _sha256(buf) != e["replay_buffer"]["sha256"]):
                    warnings.warn(f"replay buffer {buf} is missing or does not match its hash "
                                  f"in {MANIFEST}; not loading {path}", RuntimeWarning,
                                  stacklevel=2)
                    continue
            out.append({"path": path, "steps": int(e["steps"]), "replay_buffer": buf})
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a malformed entry: not a checkpoint we can vouch for
    return sorted(out, key=lambda c: c["steps"], reverse=True)


def latest_checkpoint(run_dir: str, algo: str | None = None) -> tuple[str, int] | None:
    """``(path, steps)`` of the newest trusted checkpoint (:func:`trusted_checkpoints`), or
    ``None``."""
    ckpts = trusted_checkpoints(run_dir, algo)
    return (ckpts[0]["path"], ckpts[0]["steps"]) if ckpts else None


def read_evaluations(path: str) -> list[dict[str, Any]]:
    """The records of ``evaluations.jsonl``, sorted by ``timesteps``; lines that are not a
    complete record (e.g. half-written by an interrupted run) are skipped with a warning, and
    of records with the same ``timesteps`` the last one is kept."""
    recs: dict[int, dict[str, Any]] = {}
    bad = 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ok = (isinstance(r, dict) and isinstance(r.get("timesteps"), int)
                      and all(isinstance(r.get(k), (int, float)) for k in ("mean", "std")))
            except ValueError:
                ok = False
            if ok:
                recs[r["timesteps"]] = r
            else:
                bad += 1
    if bad:
        warnings.warn(f"{path}: skipped {bad} unreadable line(s)", RuntimeWarning, stacklevel=2)
    return [recs[t] for t in sorted(recs)]


def truncate_evaluations(path: str, steps: int) -> None:
    """Keep the readable records up to ``steps`` (a resumed run re-evaluates the rest)."""
    recs = read_evaluations(path) if os.path.exists(path) else []
    write_text(path, "".join(json.dumps(r) + "\n" for r in recs if r["timesteps"] <= steps))
