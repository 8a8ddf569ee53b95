"""What callers get from the encoder engine, in process or from its worker processes: the result
types, and the two kinds of request (`Op`) it serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Op = Literal["embed", "classify"]


@dataclass(frozen=True, slots=True)
class EncodeResult:
    embeddings: np.ndarray  # float32 [n, d]
    tokens: list[int]  # per input
    compute_ns: int  # attributed engine time


@dataclass(frozen=True, slots=True)
class ClassifyResult:
    labels: list[str]
    probs: list[dict[str, float]]
    tokens: list[int]
    compute_ns: int
