"""Whether this process is one rank of several under ``torch.distributed``."""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
