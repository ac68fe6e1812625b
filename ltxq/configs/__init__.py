"""The config model behind ltxq.config (import it from there).

fields (how a field is declared, checked and parsed), sections (the training sections, one
frozen dataclass each), parse (a TOML dict to a TrainingConfig; the rules across fields), kinds
(caption and preprocess jobs). No torch, no I/O at import.
"""

# Constants that modules loaded by every command need (job.py, the caption command's option
# defaults), here so that they do not load the sections' dataclasses to get them.
KINDS = ("train", "caption", "preprocess")  # what [job].kind may say
DEFAULT_CAPTION_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
DEFAULT_CAPTION_PROMPT = "Shortly describe the content of this video in two sentences."
