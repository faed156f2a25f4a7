"""Retrieval: find the blocks relevant to a question.

``BlockIndex`` (FAISS, host) and ``TorchFlatIndex`` (torch, any device) rank blocks by
one summary vector each; ``LayeredIndex`` keeps one index per layer or layer group, and
``SegmentedIndex`` seals its older rows into memory-mapped files in a session directory.
"""

from ._inputs import DuplicateBlockIdError, IndexFileError, IndexInputError, UnknownBlockIdError
from .device import FAISS_GPU_ARCHS, TorchFlatIndex, faiss_gpu_usable
from .index import DEFAULT_IVF_THRESHOLD, DEFAULT_NPROBE, BlockIndex
from .layered import LayeredIndex
from .segmented import SegmentedIndex

__all__ = [
    "BlockIndex",
    "DEFAULT_IVF_THRESHOLD",
    "DEFAULT_NPROBE",
    "DuplicateBlockIdError",
    "FAISS_GPU_ARCHS",
    "IndexFileError",
    "IndexInputError",
    "LayeredIndex",
    "SegmentedIndex",
    "TorchFlatIndex",
    "UnknownBlockIdError",
    "faiss_gpu_usable",
]
