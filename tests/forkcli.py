"""The real command line, many times, without paying the interpreter's start-up each time.

A server process imports fpdsl's command line (Hydra, torch, MLflow) once; for each
request it forks a child that runs `fpdsl.__main__.cli()` with that argv, in that folder
and environment, its stdout and stderr going to files. Each child is a real, separate
process running the real entry point; only the imports are shared.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SERVER = textwrap.dedent(r"""
    import json, os, sys
    import fpdsl.__main__, hydra, torch, numpy, mlflow, scipy.optimize  # noqa: F401 (shared by every child)
    from mlflow.tracking import MlflowClient  # noqa: F401
    for line in sys.stdin:
        req = json.loads(line)
        out, err = req["out"], req["err"]
        pid = os.fork()
        if pid == 0:
            try:
                os.chdir(req["cwd"])
                os.environ.clear()
                os.environ.update(req["env"])
                fd1, fd2 = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd1, 1)
                os.dup2(fd2, 2)
                sys.argv = ["fpdsl", *req["argv"]]
                code = 0
                try:
                    fpdsl.__main__.cli()
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                except BaseException:
                    import traceback
                    traceback.print_exc()
                    code = 99
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(locals().get("code", 98))
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
""")


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


class ForkCLI:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)

    def __call__(self, tmp_path, *argv, env=None) -> Result:
        e = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db")
        e.pop("CI", None)
        e.update(env or {})
        out, err = tmp_path / ".stdout", tmp_path / ".stderr"
        req = {"argv": list(argv), "cwd": str(tmp_path), "env": e, "out": str(out), "err": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return Result(rc, out.read_text(), err.read_text())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
