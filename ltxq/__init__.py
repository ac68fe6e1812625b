"""ltxq: a file-spool job queue for LTX-Video LoRA fine-tuning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Spool", "__version__"]

if TYPE_CHECKING:
    from ltxq.spool import Spool


def __getattr__(name: str) -> Any:
    # Lazy, so `import ltxq` stays cheap for the CLI; the spool never imports torch anyway.
    if name == "Spool":
        from ltxq.spool import Spool
        return Spool
    raise AttributeError(name)
