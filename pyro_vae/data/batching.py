"""One epoch of batches: index tensors for data on the device, or a loader streaming from host memory."""

from collections.abc import Iterator

import torch

from ..errors import ConfigError, DataError
from .checks import check_int
from .splits import Splits


def batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device=None,
    drop_last: bool = False,
    shuffle: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield int64 index tensors on ``device`` covering ``range(n)`` once (one epoch).

    With ``shuffle`` (default) the order is ``torch.randperm(n, generator=generator)``,
    made on the generator's device (the CPU when ``generator`` is None or a CPU generator,
    so results are reproducible across devices) and moved to ``device`` once per call.
    Index an on-device tensor with each batch: ``for idx in batches(...): x = data[idx]``.
    The last batch is smaller unless ``drop_last``. Arguments are checked on the call,
    the permutation is drawn when iteration starts.
    """
    n = check_int("n", n, minimum=0, what="batches")
    if n == 0:
        raise DataError("batches() got n=0: the dataset to batch is empty.")
    batch_size = check_int("batch_size", batch_size, minimum=1, what="batches")
    if drop_last and batch_size > n:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the {n} examples and drop_last is set, "
            "so an epoch would have no batches; lower batch_size."
        )
    return _batches(n, batch_size, generator, device, drop_last, shuffle)


def _batches(n, batch_size, generator, device, drop_last, shuffle):
    if shuffle:
        source = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=source)
    else:
        order = torch.arange(n)
    if device is not None:
        order = order.to(device)
    stop = n - n % batch_size if drop_last else n
    yield from torch.split(order[:stop], batch_size)


class _Rows(torch.utils.data.Dataset):
    """``dataset[index_tensor]`` is the batch ``x[index_tensor]`` (one fetch per batch)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __getitem__(self, index):
        return self.x[index]

    def __len__(self):
        return len(self.x)


def make_loader(
    x: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    device=None,
    num_workers: int = 0,
    drop_last: bool = False,
    shuffle: bool = True,
) -> Iterator[torch.Tensor]:
    """One epoch of batches of the host tensor ``x``, copied to ``device`` as they are used.

    For data too large for the device (see :func:`fits_on_device`). Yields
    ``x[idx].to(device)`` for ``idx in batches(len(x), batch_size, generator, None,
    drop_last, shuffle)``: the same batches, in the same order, as indexing an on-device
    copy. The batches are gathered by a ``torch.utils.data.DataLoader`` (``num_workers``
    background processes), in pinned memory when ``device`` is CUDA, and copied with
    ``non_blocking=True``. The loader draws no numbers from the global RNG.
    """
    order = batches(len(x), batch_size, generator, None, drop_last, shuffle)
    device = torch.device("cpu" if device is None else device)
    num_workers = check_int("num_workers", num_workers, minimum=0, what="make_loader")
    loader = torch.utils.data.DataLoader(
        _Rows(x), sampler=order, batch_size=None, num_workers=num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(),
    )
    return (batch.to(device, non_blocking=True) for batch in loader)


def fits_on_device(splits: Splits, device, fraction: float = 0.5, cpu_limit_bytes: int | None = None) -> bool:
    """Whether ``splits`` (all its tensors) should be moved to ``device`` whole.

    CUDA: if they take at most ``fraction`` of the device's free memory
    (``torch.cuda.mem_get_info``); otherwise stream them with :func:`make_loader`.
    Other devices: always, unless ``cpu_limit_bytes`` is set and they are larger.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return splits.nbytes <= fraction * free
    return cpu_limit_bytes is None or splits.nbytes <= cpu_limit_bytes
