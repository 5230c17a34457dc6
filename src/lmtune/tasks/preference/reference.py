"""DPO's reference log-probabilities for --method full and freeze, computed once and cached.

The reference is the model before training. Rather than keep a second copy of it in memory
for the whole run, its summed answer log-probabilities of every training and validation pair
are computed in one pass before the first step, in fp32, and saved as

    $LMTUNE_HOME/reference/<key>.npz    train, val: (pairs, 2) float64 (chosen, rejected)

The key hashes the model's weights, the tokenized pairs and the length they are cut at, so a
resumed run (or a second run on the same data and model) reads the file and computes nothing,
and other data, another model or another cut make another key. Training memory is then that
of supervised fine-tuning. LoRA runs need none of this: their reference is the same model
with the adapter switched off.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from lmtune.atomic import write_file
from lmtune.home import lmtune_home
from lmtune.models.forward import sequence_logps
from lmtune.progress import iterate

REFERENCE_VERSION = 1
HASH_BLOCK = 1 << 24  # bytes of a weight hashed at a time


def reference_root() -> Path:
    return lmtune_home() / "reference"


def model_fingerprint(model) -> str:
    """A hash of the model's weights (and its type): about a second per GB of fp32 weights,
    a small share of the pass over the data it saves."""
    h = hashlib.blake2b(model.config.model_type.encode(), digest_size=16)
    for name, p in model.state_dict().items():
        data = p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype};".encode())
        for i in range(0, len(data), HASH_BLOCK):
            h.update(data[i:i + HASH_BLOCK])
    return h.hexdigest()


def reference_key(model, data_hash: str, max_length: int) -> str:
    parts = (f"lmtune-reference-v{REFERENCE_VERSION}", model_fingerprint(model), data_hash,
             f"max_length={max_length}", "fp32")
    return hashlib.sha256(";".join(parts).encode()).hexdigest()[:24]


def compute(model, dataset, batch_size: int, device) -> np.ndarray:
    """(pairs, 2) summed log-probabilities of every pair's (chosen, rejected) answer, in fp32
    with dropout off: the reference of a full or freeze run."""
    return pair_logps(model, dataset, batch_size, device, what="reference log-probabilities")[0]


@torch.no_grad()
def pair_logps(model, dataset, batch_size: int, device, autocast=None,
               what: str = "log-probabilities") -> tuple[np.ndarray, np.ndarray]:
    """((pairs, 2) summed answer log-probabilities, (pairs, 2) answer token counts) of every
    pair of `dataset`, (chosen, rejected) in each row; in fp32 unless `autocast` is given."""
    was_training = model.training
    model.eval()
    sums = np.zeros((len(dataset), 2), dtype=np.float64)
    counts = np.zeros((len(dataset), 2), dtype=np.int64)
    batches = iterate(dataset.batches(0, batch_size), what, dataset.num_batches(batch_size),
                      "batch")
    for batch in batches:
        with autocast() if autocast else torch.autocast(torch.device(device).type,
                                                        enabled=False):
            got, n = sequence_logps(model, batch, device)
        sums[batch.rows] = got.double().cpu().numpy().reshape(2, -1).T
        counts[batch.rows] = n.cpu().numpy().reshape(2, -1).T
    model.train(was_training)
    return sums, counts


def attach(model, sets: dict, *, key: str, batch_size: int, device) -> str:
    """Give each dataset of `sets` ({"train": ..., "val": ...}, None for none) its reference,
    read from the cache or computed and saved; returns what was done, for the start messages."""
    path = reference_root() / f"{key}.npz"
    wanted = {name: ds for name, ds in sets.items() if ds is not None}
    saved = _read(path, {name: len(ds) for name, ds in wanted.items()})
    if saved is not None:
        for name, ds in wanted.items():
            ds.reference = saved[name]
        return f"reference log-probabilities: read from {path}"
    t0 = time.perf_counter()
    original = next(model.parameters()).device
    model.to(device)
    try:
        arrays = {name: compute(model, ds, batch_size, device) for name, ds in wanted.items()}
    finally:
        model.to(original)
    for name, ds in wanted.items():
        ds.reference = arrays[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda tmp: _save(tmp, arrays))
    n = sum(len(ds) for ds in wanted.values())
    return (f"reference log-probabilities of {n} pairs: computed once in "
            f"{time.perf_counter() - t0:.1f} s and cached in {path}")


def _save(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
        np.savez(f, **arrays)


def _read(path: Path, sizes: dict) -> dict | None:
    """The cached arrays, or None when there are none that fit (a damaged file is recomputed
    rather than trusted)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in sizes}
    except (OSError, KeyError, ValueError):
        return None
    if any(arrays[n].shape != (size, 2) or not np.isfinite(arrays[n]).all()
           for n, size in sizes.items()):
        return None
    return arrays
