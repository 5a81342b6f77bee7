"""Training: the two-phase loop with validation, checkpoints, resume and logs.

- :class:`hovercrypt.train.trainer.Trainer` runs all phases of ``cfg.train``.
- :func:`hovercrypt.train.cli.run` is what ``run_train.py`` calls.
- ``amp`` (device / mixed precision), ``distributed`` (DDP), ``validate``,
  ``logs`` (TensorBoard, CSV, plot) and ``state`` (seeds, schedule) are the parts.
"""

from hovercrypt.train.trainer import Trainer, resolve_resume

__all__ = ["Trainer", "resolve_resume"]
