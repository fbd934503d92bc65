"""Where a run came from: the code's git commit and the dataset, as MLflow records them."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import fpdsl


def git_commit(start: Path) -> tuple[str, str] | None:
    """(commit, repository folder) of the git work tree holding start, read from .git
    without running git; None outside one."""
    for folder in [start, *start.parents]:
        dot = folder / ".git"
        if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = dot.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            dot = (folder / text.split(":", 1)[1].strip()).resolve()
        if dot.is_dir():
            head = (dot / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head, str(folder)
            ref = head.split(":", 1)[1].strip()
            for base in (dot, _common_dir(dot)):
                if (base / ref).is_file():
                    return (base / ref).read_text().strip(), str(folder)
                packed = base / "packed-refs"
                if packed.is_file():
                    for line in packed.read_text().splitlines():
                        if line.endswith(" " + ref):
                            return line.split()[0], str(folder)
            return None
    return None


def _common_dir(dot: Path) -> Path:
    f = dot / "commondir"
    return (dot / f.read_text().strip()).resolve() if f.is_file() else dot


def tags() -> dict[str, str]:
    """MLflow's source tags: the program, and the git commit of the folder the run started
    in (the user's project), else of fpdsl's own checkout."""
    out = {"mlflow.source.name": "fpdsl", "mlflow.source.type": "LOCAL", "fpdsl.version": fpdsl.__version__,
           "mlflow.user": os.environ.get("USER", "")}
    for start in (Path.cwd(), Path(fpdsl.__file__).resolve().parent):
        found = git_commit(start)
        if found:
            out["mlflow.source.git.commit"], out["fpdsl.git_repository"] = found
            break
    out["fpdsl.command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:2000] if sys.argv else ""
    return {k: v for k, v in out.items() if v}


def dataset_input(data, name: str, node) -> dict:
    """The dataset as an MLflow dataset input: its name, a digest of the arrays, the config
    that made it as source, the shapes as schema."""
    import numpy as np
    from omegaconf import OmegaConf

    x, y = np.ascontiguousarray(data.x), np.ascontiguousarray(data.y)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()[:16]
    source = json.dumps(OmegaConf.to_container(node, resolve=True), default=str)[:5000]
    schema = json.dumps({"mlflow_tensorspec": {"features": json.dumps([{"type": "tensor", "tensor-spec": {
        "dtype": "float64", "shape": [-1, x.shape[1]]}, "name": "x"}]), "targets": json.dumps([{"type": "tensor",
        "tensor-spec": {"dtype": "float64", "shape": [-1, y.shape[1]]}, "name": "y"}])}})
    profile = json.dumps({"features_shape": list(x.shape), "targets_shape": list(y.shape)})
    return {"name": name, "digest": digest, "source": source, "schema": schema, "profile": profile}
