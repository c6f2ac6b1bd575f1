"""The supernet cache: ``<cache_dir>/supernet/<model>-<dataset>-<start>-<choices>-<recipe>/``.

Three hashes name a supernet: what it starts from (the float model's key, the quantizer,
the seed), every layer's bit choices, and its training recipe. A search finds the supernet
of its own choices and recipe, else one of the same start trained for the same or a
superset of its choices (another recipe: the newest); a supernet for other choices is
refused with the difference named.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from qsearch.checkpoint import checkpoint_path, write_checkpoint
from qsearch.config import freeze_config
from qsearch.errors import UserError
from qsearch.quant.layers import QuantizerSpec
from qsearch.supernet.model import LayerChoices, build_supernet
from qsearch.train.float_model import float_identity, float_key, float_seed
from qsearch.train.runtime import Runtime
from qsearch.utils.io import (
    load_torch,
    load_weights,
    newest_match,
    reading_checkpoint,
    write_json,
)

log = logging.getLogger(__name__)

SUPERNET_FORMAT = "qsearch-supernet/1"


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _base(cfg: DictConfig, runtime: Runtime) -> dict[str, Any]:
    """What a supernet starts from: the float model, the quantizer, the seed."""
    return {
        "float": float_key(float_identity(cfg, runtime)),
        "quantizer": OmegaConf.to_container(cfg.quantizer, resolve=True),
        "seed": float_seed(cfg),
    }


def _recipe(cfg: DictConfig) -> dict[str, Any]:
    """How it is trained (the evaluator's settings that change the weights)."""
    recipe = OmegaConf.to_container(cfg.evaluator, resolve=True)
    assert isinstance(recipe, dict)
    for key in ("name", "val_subset", "bn_batches"):  # how it scores, not its weights
        recipe.pop(key, None)
    return recipe


def _choices_json(choices: dict[str, LayerChoices]) -> dict[str, dict[str, list[int]]]:
    return {name: {k: list(v) for k, v in asdict(c).items()} for name, c in choices.items()}


def supernet_dir(cfg: DictConfig, runtime: Runtime, choices: dict[str, LayerChoices]) -> Path:
    """Where the supernet of ``cfg`` for ``choices`` is (or will be) cached:
    ``<model>-<dataset>-<start>-<choices>-<recipe>`` (each a short hash)."""
    parts = (_base(cfg, runtime), _choices_json(choices), _recipe(cfg))
    name = "-".join([cfg.model.name, cfg.dataset.name, *map(_hash, parts)])
    return Path(cfg.cache_dir) / "supernet" / name


def read_choices(path: Path) -> dict[str, LayerChoices]:
    """The per-layer bit choices a cached supernet file was trained for."""
    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != SUPERNET_FORMAT:
        raise UserError(f"{path} is not a qsearch supernet")
    return {name: LayerChoices(tuple(c["w"]), tuple(c["a"])) for name, c in blob["choices"].items()}


def describe(choices: dict[str, LayerChoices]) -> str:
    """Short text of the choices of the searched layers (those with more than one)."""
    searched = [c for c in choices.values() if len(c.w) > 1 or len(c.a) > 1]
    if not searched:
        return "no searched layer"
    w = sorted({b for c in searched for b in c.w})
    a = sorted({b for c in searched for b in c.a})
    return f"w {w}, a {a}"


def find_supernet(
    cfg: DictConfig, runtime: Runtime, needed: dict[str, LayerChoices], retrain_hint: str
) -> Path:
    """The cached supernet for ``needed`` choices: its own, or one trained for a superset.

    Raises:
        UserError: none is cached (names the command that trains it), or only ones for
            other choices (names the difference).
    """
    own = supernet_dir(cfg, runtime, needed)
    if (own / "model.pt").is_file():
        return own / "model.pt"
    prefix = own.name.rsplit("-", 2)[0]  # same model, dataset, float model, quantizer, seed
    same_choices = own.name.rsplit("-", 1)[0]
    siblings = sorted(
        own.parent.glob(f"{prefix}-*/model.pt"),
        key=lambda p: (not p.parent.name.startswith(same_choices), -p.stat().st_mtime),
    )
    others = []
    for path in siblings:
        choices = read_choices(path)
        if choices.keys() == needed.keys() and all(
            choices[name].covers(needed[name]) for name in needed
        ):
            log.info(
                "using the supernet trained for %s (another recipe or more bits): %s",
                describe(choices),
                path,
            )
            return path
        others.append(describe(choices))
    if others:
        raise UserError(
            f"the cached supernet(s) of {cfg.model.name}/{cfg.dataset.name} were trained for "
            f"other bit choices ({'; '.join(others)}) than this search's ({describe(needed)}): "
            f"train one with `{retrain_hint}`"
        )
    raise UserError(
        f"no supernet trained for {cfg.model.name}/{cfg.dataset.name} with this float model, "
        f"quantizer and bit choices ({describe(needed)}): train it first with `{retrain_hint}`"
    )


def save_supernet(
    path: Path,
    model: nn.Module,
    cfg: DictConfig,
    choices: dict[str, LayerChoices],
    meta: dict[str, Any],
) -> Path:
    """Write the supernet checkpoint and, beside it, ``metrics.json``."""
    config = freeze_config(cfg, ("model", "dataset", "quantizer"))
    write_checkpoint(path, SUPERNET_FORMAT, model, config, meta, choices=_choices_json(choices))
    write_json(path.parent / "metrics.json", meta)
    return path


def load_supernet(path: Path, float_model: nn.Module, spec: QuantizerSpec) -> nn.Module:
    """The cached supernet at ``path``, rebuilt around a copy of ``float_model``'s layout."""
    choices = read_choices(path)
    model = build_supernet(float_model, choices, spec)
    blob = load_torch(path)
    with reading_checkpoint(path, "supernet"):
        state_dict = blob["state_dict"]
    return load_weights(model, state_dict, path)


def supernet_file(
    value: str, model: str, dataset: str, root: Path = Path("outputs/supernet")
) -> Path:
    """The supernet ``finetune.init`` names: ``supernet`` (the newest ``qsearch supernet``
    run of ``model`` on ``dataset``), a run directory, or a ``model.pt``.

    Raises:
        UserError: there is none, or the file is not a qsearch supernet.
    """
    if value == "supernet":
        newest = newest_match(root, f"*_{model}_{dataset}/model.pt")
        if newest is None:
            raise UserError(
                f"finetune.init=supernet: no `qsearch supernet` run of {model} on {dataset} "
                f"under {root} (train one with the search's overrides, or give its path)"
            )
        path = newest
    else:
        path = checkpoint_path(value)
        if not path.is_file():
            raise UserError(f"finetune.init={value}: no such supernet file or run dir")
    read_choices(path)  # a UserError unless it is a supernet
    return path.resolve()
