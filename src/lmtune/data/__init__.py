"""Data pipeline: read files -> examples -> tokens -> packed or padded batches.

Each stage is a plain function or small class that can be used and tested alone; nothing
here loads a model.
"""

from lmtune.data.examples import (Example, build_examples, build_examples_with_stats, split_examples,
                                  split_indices)
from lmtune.data.packing import Batch, PackedDataset, PaddedDataset
from lmtune.data.readers import FORMATS, read_records
from lmtune.data.tokenize import TokenizedDocs, start_token_id, tokenize_examples

__all__ = [
    "read_records", "FORMATS",
    "Example", "build_examples", "build_examples_with_stats", "split_examples", "split_indices",
    "TokenizedDocs", "tokenize_examples", "start_token_id",
    "Batch", "PackedDataset", "PaddedDataset",
]
