"""Patch-based training of HaineiFRDM (paper Sec. 3.1, 3.3): ``frdm train CONFIG``.

``TrainConfig`` (config.py) is the one description of a run; ``losses`` holds Eqs. 3-6; ``Trainer``
(trainer.py) runs them on HF accelerate with checkpoints (checkpoint.py), validation (validation.py) and logs.
Importing this package imports nothing heavy; its modules import torch.
"""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
