"""The learning-rate schedule shared by distillation and bootstrap."""

import math


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Multiplier of the peak rate: linear warm-up, then cosine decay to `floor`."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    progress = min(1.0, step / max(1, total))
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
