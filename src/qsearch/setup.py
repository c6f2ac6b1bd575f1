"""What every command builds from its config first, built once: :class:`Setup`.

``Setup.from_config(cfg)`` turns the composed config into typed pieces: the runtime, the
float model (built from the dataset's shape, no data read) and its layer inventory, the
quantizer spec; the data splits are read on first use (a synthetic search reads none), the
float checkpoint is fetched from the cache or trained on first use, and the requested
policy (``policy=`` or ``w_bits``/``a_bits``) is resolved on demand. Bad input is a
:class:`~qsearch.errors.UserError` before anything trains. The commands, the benchmark
scripts and the test fixtures use it instead of rebuilding these pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from omegaconf import DictConfig
from torch import nn

from qsearch.data import DatasetInfo, DataSplits, build_data, dataset_shape
from qsearch.models import build_model, model_inventory
from qsearch.models.inventory import LayerInfo
from qsearch.quant.layers import QuantizerSpec
from qsearch.quant.policy import Policy, resolve_policy
from qsearch.train.fit import Monitor
from qsearch.train.float_model import (
    FloatCheckpoint,
    float_cache_dir,
    load_float_weights,
    read_float_checkpoint,
    train_float,
)
from qsearch.train.runtime import Runtime, resolve_runtime


@dataclass
class Setup:
    """The runtime, float model and inventory of a command's config (see the module
    docstring); ``data``, ``spec`` and ``float_checkpoint`` are built on first use."""

    cfg: DictConfig
    runtime: Runtime
    info: DatasetInfo
    float_model: nn.Module
    inventory: list[LayerInfo]
    _checkpoint: FloatCheckpoint | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Setup:
        """Runtime, model and inventory of ``cfg`` (no data read)."""
        runtime = resolve_runtime(cfg.runtime)
        info = dataset_shape(cfg.dataset)
        model = build_model(cfg.model, info)
        return cls(cfg, runtime, info, model, list(model_inventory(model, info)))

    @cached_property
    def spec(self) -> QuantizerSpec:
        """The quantizer of ``cfg.quantizer`` (commands that quantize)."""
        return QuantizerSpec.from_config(self.cfg.quantizer)

    @cached_property
    def data(self) -> DataSplits:
        """The dataset's train / val / test splits (read on first use)."""
        return build_data(self.cfg.dataset)

    def policy(self) -> Policy:
        """The policy ``cfg`` asks for: ``policy=`` (a file, a search run, ``latest``,
        ``uniform_4``) or ``w_bits``/``a_bits``; a UserError when it does not fit the model."""
        cfg = self.cfg
        return resolve_policy(
            cfg.policy,
            cfg.w_bits,
            cfg.a_bits,
            model=cfg.model.name,
            dataset=cfg.dataset.name,
            inventory=self.inventory,
            pin_first_last=cfg.pin_first_last,
        )

    def cached_float_checkpoint(self) -> FloatCheckpoint | None:
        """The float checkpoint of ``cfg`` if the cache holds it (its weights loaded into
        :attr:`float_model`), else None; never trains."""
        if self._checkpoint is None:
            path = float_cache_dir(self.cfg, self.runtime) / "model.pt"
            if not path.is_file():
                return None
            self._checkpoint = read_float_checkpoint(path)
            load_float_weights(self.float_model, self._checkpoint)
        return self._checkpoint

    def float_checkpoint(
        self, monitor: Monitor | None = None, force: bool = False
    ) -> FloatCheckpoint:
        """The float checkpoint of ``cfg`` (trained first when the cache lacks it, or with
        ``force``), its weights loaded into :attr:`float_model`. Fetched once."""
        if self._checkpoint is None or force:
            self._checkpoint = train_float(
                self.cfg, self.data, self.runtime, force=force, monitor=monitor
            )
            load_float_weights(self.float_model, self._checkpoint)
        return self._checkpoint
