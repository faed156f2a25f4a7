"""Retrieval: find the blocks relevant to a question.

``BlockIndex`` (FAISS, host) and ``TorchFlatIndex`` (torch, any device) rank blocks by
one summary vector each; ``LayeredIndex`` keeps one index per layer or layer group.
"""

from ._inputs import DuplicateBlockIdError, IndexFileError, IndexInputError, UnknownBlockIdError
from .device import FAISS_GPU_ARCHS, TorchFlatIndex, faiss_gpu_usable
from .index import DEFAULT_IVF_THRESHOLD, DEFAULT_NPROBE, BlockIndex
from .layered import LayeredIndex

__all__ = [
    "BlockIndex",
    "DEFAULT_IVF_THRESHOLD",
    "DEFAULT_NPROBE",
    "DuplicateBlockIdError",
    "FAISS_GPU_ARCHS",
    "IndexFileError",
    "IndexInputError",
    "LayeredIndex",
    "TorchFlatIndex",
    "UnknownBlockIdError",
    "faiss_gpu_usable",
]
