"""The config model behind ltxq.config (import it from there).

fields (how a field is declared, checked and parsed), sections (the training sections, one
frozen dataclass each), parse (a TOML dict to a TrainingConfig; the rules across fields), kinds
(caption and preprocess jobs). No torch, no I/O at import.
"""
