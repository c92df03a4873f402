"""The label pipeline's op: (label) -> (label, split position).

The `with_index` hook must report which samples FFCV actually decoded, not
what the loader believes it asked for; FFCV hands every op that sets
`with_indices` the batch's sample ids, and beton sample i is split position i.
Packing both into one int64 row keeps a single label output.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional, Tuple

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State


class LabelWithIndex(Operation):
    """int64 (1,) label -> int64 (2,) [label, split position]."""

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        out = np.dtype(np.int64)
        return replace(previous_state, jit_mode=True, shape=(2,), dtype=out), AllocationQuery((2,), out)

    def generate_code(self) -> Callable:
        def label_with_index(labels, dst, indices):
            for i in range(len(indices)):
                dst[i, 0] = labels[i, 0]
                dst[i, 1] = indices[i]
            return dst[:len(indices)]

        label_with_index.with_indices = True
        return label_with_index
