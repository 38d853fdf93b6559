"""The train/val/test tensors of one dataset (:class:`Splits`)."""

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from ..errors import DataError
from ..validation import check_int
from .transforms import binarize_batch, binarize_fixed, dequantize_batch, dequantize_fixed, derive_seed

SPLITS = ("train", "val", "test")


@dataclass(eq=False, repr=False)
class Splits:
    """Train/val/test tensors of one dataset, with labels and a record of the preprocessing.

    ``train``, ``val`` and ``test`` are float32 tensors of shape ``(N, *data_shape)``;
    ``val`` and ``test`` may be empty (``N == 0``), ``train`` may not. Labels are int64
    tensors of shape ``(N,)`` or ``None``; factors (datasets with known generative
    factors, such as ``sprites``) are int64 tensors of shape ``(N, F)`` or ``None``.
    ``data_shape`` defaults to ``train.shape[1:]``. ``info`` holds plain Python values
    only (str, int, float, bool, None, lists, dicts). ``loaded`` names the splits that were
    read; a dataset asked for fewer (see :class:`~pyro_vae.registry.BuildContext`) leaves the
    others empty, and only a loaded training split must hold examples.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    data_shape: tuple | None = None
    info: dict = field(default_factory=dict)
    train_factors: torch.Tensor | None = None
    val_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None
    loaded: tuple = SPLITS

    def __post_init__(self):
        for split in SPLITS:
            x = getattr(self, split)
            if not isinstance(x, torch.Tensor):
                raise DataError(f"Splits.{split} must be a torch.Tensor, got {type(x).__name__}.")
            if not x.is_floating_point():
                raise DataError(f"Splits.{split} must be a floating-point tensor, got {x.dtype}.")
            if x.dim() < 1:
                raise DataError(f"Splits.{split} must have a leading sample dimension.")
            setattr(self, split, x.to(torch.float32))
        if not set(self.loaded) <= set(SPLITS):
            raise DataError(f"Splits.loaded must name splits among {SPLITS}, got {self.loaded!r}.")
        self.loaded = tuple(self.loaded)
        if "train" in self.loaded and self.train.shape[0] == 0:
            raise DataError("The training split is empty: a dataset needs at least one example.")
        shape = tuple(int(s) for s in self.train.shape[1:])
        if self.data_shape is None:
            self.data_shape = shape
        self.data_shape = tuple(int(s) for s in self.data_shape)
        for split in SPLITS:
            got = tuple(getattr(self, split).shape[1:])
            if got != self.data_shape:
                raise DataError(
                    f"Splits.{split} has examples of shape {got}, expected {self.data_shape}."
                )
            self._check_per_example(split, "labels", ndim=1)
            self._check_per_example(split, "factors", ndim=2)
        if not isinstance(self.info, dict):
            raise DataError(f"Splits.info must be a dict, got {type(self.info).__name__}.")

    def _check_per_example(self, split: str, kind: str, ndim: int):
        """Check (and cast to int64) ``{split}_{kind}``: None or one row per example."""
        name = f"{split}_{kind}"
        value = getattr(self, name)
        if value is None:
            return
        if not isinstance(value, torch.Tensor) or value.dim() != ndim:
            raise DataError(f"Splits.{name} must be a {ndim}-d tensor or None.")
        n = getattr(self, split).shape[0]
        if value.shape[0] != n:
            raise DataError(f"Splits.{name} has {value.shape[0]} entries for {n} examples.")
        setattr(self, name, value.to(torch.int64))

    @property
    def dynamic_binarization(self) -> bool:
        """Whether the training loop should binarise each batch with :func:`binarize_batch`."""
        return self.info.get("binarize") == "dynamic"

    @property
    def dequantization(self) -> bool:
        """Whether the training loop should dequantise each batch with :func:`dequantize_batch`."""
        return self.info.get("dequantize") is True

    @property
    def levels(self) -> int:
        """The number of grey levels L of the stored values k / (L − 1) (``info["levels"]``, 256 if unset)."""
        return int(self.info.get("levels", 256))

    @property
    def sizes(self) -> dict:
        """``{"train": n, "val": n, "test": n}``."""
        return {split: int(getattr(self, split).shape[0]) for split in SPLITS}

    @property
    def nbytes(self) -> int:
        """Bytes taken by all tensors (data, labels, factors)."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values() if t is not None)

    def _tensors(self) -> dict:
        names = [f"{split}{suffix}" for split in SPLITS for suffix in ("", "_labels", "_factors")]
        return {name: getattr(self, name) for name in names}

    def transform_batch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-batch transform ``info`` asks for: a fresh binarisation
        (:func:`binarize_batch`), a fresh dequantisation (:func:`dequantize_batch`) or
        none (``x`` itself). The training loop calls it on every batch."""
        if self.dynamic_binarization:
            return binarize_batch(x, generator)
        if self.dequantization:
            return dequantize_batch(x, generator, self.levels)
        return x

    def to(self, device) -> "Splits":
        """A copy with every tensor (data, labels, factors) moved to ``device``; ``info`` is copied."""
        moved = {name: None if t is None else t.to(device) for name, t in self._tensors().items()}
        return dataclasses.replace(self, **moved, info=copy.deepcopy(self.info))

    def fixed_transform(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """One draw of the per-batch transform of ``x`` determined by ``seed``
        (:func:`binarize_fixed` or :func:`dequantize_fixed`), or ``x`` itself."""
        seed = check_int(seed, "seed of Splits.fixed_transform", minimum=0)
        if self.dynamic_binarization:
            return binarize_fixed(x, seed)
        if self.dequantization:
            return dequantize_fixed(x, seed, self.levels)
        return x

    def eval_split(self, split: str, seed: int = 0) -> torch.Tensor:
        """The ``split`` ("train", "val" or "test") of :meth:`eval_view`, computed alone."""
        seed = check_int(seed, "seed of Splits.eval_split", minimum=0)
        return self.fixed_transform(getattr(self, split), derive_seed(seed, SPLITS.index(split)))

    def eval_view(self, seed: int = 0) -> "Splits":
        """The splits with one fixed draw of the per-batch transform, for evaluation.

        Under dynamic binarisation the stored tensors hold grey levels, which are outside
        a Bernoulli likelihood's support; under dequantisation they hold the 8-bit levels
        rather than the dequantised values the model is trained on. Evaluate on this view
        instead: one Bernoulli draw (:func:`binarize_fixed`) or one uniform dequantisation
        (:func:`dequantize_fixed`) per pixel. The draw for each split depends only on
        ``seed`` and that split's tensor (not on the device or the other splits), so it is
        the same on every call. Without a per-batch transform, returns ``self``. The
        view's ``info`` has ``binarize: "fixed"`` and ``eval_binarize_seed: seed`` (or
        ``dequantize: "fixed"`` and ``eval_dequantize_seed: seed``).
        """
        if self.dynamic_binarization:
            key = "binarize"
        elif self.dequantization:
            key = "dequantize"
        else:
            return self
        fixed = {split: self.eval_split(split, seed) for split in SPLITS}
        info = copy.deepcopy(self.info)
        info[key] = "fixed"
        info[f"eval_{key}_seed"] = seed
        return dataclasses.replace(self, **fixed, info=info)

    def __repr__(self):
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return (
            f"Splits(name={self.info.get('name')!r}, {sizes}, data_shape={self.data_shape}, "
            f"binarize={self.info.get('binarize')!r}, device={self.train.device})"
        )
