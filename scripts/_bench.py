"""Shared plumbing of the benchmark scripts: machine facts, JSON results, the Markdown page.

Each benchmark owns one section of ``docs/benchmarks.md`` between
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` and rewrites only that section, so the
scripts can run independently and in any order.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks"
DOC = REPO / "docs" / "benchmarks.md"
DOC_HEADER = """# Benchmarks

Every number on this page is produced by a script in `scripts/` (named in each section)
and saved as JSON under `benchmarks/`. Re-run a section with its command; the script
rewrites only its own section. Ratios are measured within one run on one machine.
"""


def machine() -> dict[str, Any]:
    """Facts about where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def write_json_file(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically: a killed run never leaves half a file."""
    from qsearch.utils.io import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(data, indent=1, default=str) + "\n")
    return path


def read_json_file(path: Path, default: Any) -> Any:
    """The JSON in ``path``, or ``default`` when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else default


def save_json(name: str, results: dict[str, Any]) -> Path:
    """Write ``benchmarks/<name>.json`` (results plus machine facts)."""
    return write_json_file(RESULTS_DIR / f"{name}.json", {"machine": machine(), **results})


def load_json(name: str) -> dict[str, Any]:
    """The saved ``benchmarks/<name>.json`` (``{}`` when there is none yet)."""
    return read_json_file(RESULTS_DIR / f"{name}.json", {})


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def update_doc_section(name: str, body: str) -> Path:
    """Replace (or append) the ``name`` section of docs/benchmarks.md with ``body``."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.is_file() else DOC_HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else (text.rstrip() + "\n\n" + block + "\n")
    )
    DOC.write_text(text)
    return DOC


@functools.cache
def recipe_tag(pair: str) -> str:
    """What the default `qsearch finetune` recipe for ``pair`` (``"<model>-<dataset>"``) adds
    to the first one these benchmarks used: ``"|distill=<alpha>"`` when it distils from the
    float model (conf/dataset/*.yaml ``finetune_distill``), ``"|step_init=mse"`` when LSQ's
    activation steps start at the least-MSE step. Fine-tunes cached before either change
    keep their keys and meaning."""
    from qsearch.config import job_config

    model, dataset = pair.rsplit("-", 1)
    cfg = job_config("finetune", [f"model={model}", f"dataset={dataset}"])
    alpha = float(cfg.finetune.distill.alpha)
    tag = f"|distill={alpha:g}" if alpha else ""
    step_init = cfg.quantizer.activation.get("step_init", "lsq")
    return tag + (f"|step_init={step_init}" if step_init != "lsq" else "")


def finetune_key(pair: str, bits: str, epochs: int | str | None) -> str:
    """The key of a fine-tuned accuracy in benchmarks/proxy_ground_truth.json:
    ``"<model>-<dataset>|<Policy.key()>|epochs=<n or default>"`` and :func:`recipe_tag`."""
    return f"{pair}|{bits}|epochs={epochs or 'default'}{recipe_tag(pair)}"


def qsearch_command(*args: str) -> list[str]:
    """``qsearch <args>`` with the interpreter's own entry point."""
    import sys

    return [str(Path(sys.executable).parent / "qsearch"), *args]


def finetune_policy(policy: Any, overrides: list[str]) -> dict[str, float]:
    """Fine-tune ``policy`` (a :class:`~qsearch.quant.policy.Policy`) with the product's
    ``qsearch finetune`` (seed 0 unless ``overrides`` say otherwise; compiled quantizers
    except on LeNet-5) in a temporary run dir: ``{"test", "val", "seconds"}`` accuracies
    after the fine-tune."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "policy.yaml"
        policy.save(policy_file)
        start = time.perf_counter()
        command = qsearch_command(
            "finetune",
            f"model={policy.model}",
            f"dataset={policy.dataset}",
            f"policy={policy_file}",
            "seed=0",
            # fused fake quantizers: ~1.6x faster on conv nets, not worth it on LeNet
            f"runtime.compile={str(policy.model != 'lenet5').lower()}",
            *overrides,
            f"hydra.run.dir={tmp}/run",
        )
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        metrics = read_json_file(Path(tmp) / "run" / "metrics.json", {})
    return {
        "test": metrics["accuracy"]["after_test"],
        "val": metrics["accuracy"]["after_val"],
        "seconds": round(time.perf_counter() - start, 1),
    }
