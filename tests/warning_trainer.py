"""The real trainer, with a library-logger warning and a Python warning raised from inside the
run (its config export says them), so a test can see where library output goes under a daemon."""

from __future__ import annotations

import logging
import warnings

from ltxq import trainer
from ltxq.trainer import export

_save_config = export.save_config


def _noisy_save_config(*args, **kwargs):
    logging.getLogger("diffusers").warning("a diffusers warning from inside the job")
    warnings.warn("a Python warning from inside the job", UserWarning, stacklevel=1)
    return _save_config(*args, **kwargs)


export.save_config = _noisy_save_config
train = trainer.train
