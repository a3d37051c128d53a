"""Helpers every benchmark shares: the machine description and the results file."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parents[1]))


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "gpus": gpus, "platform": platform.platform()}


def write_result(name: str, result: dict) -> Path:
    """Print the result as JSON and write it to bench/results/<name>.json (with the machine)."""
    result = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **result}
    try:
        result["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                              text=True, cwd=RESULTS.parent).stdout.strip()
    except OSError:
        pass
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
