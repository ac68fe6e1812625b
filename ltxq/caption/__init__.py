"""Captioning: vision-language models write the captions a dataset lacks.

- `dataset.py`: which clips need a caption, and recording one atomically (captions.jsonl or
  clip.txt), with a lock per clip so two processes never caption the same clip.
- `frames.py`: decode a clip with the trainer's decoder, sampled at about 3 fps.
- `models.py`: captioners behind one interface (Qwen2.5-VL and other transformers VLMs), kept
  warm between jobs; `tiny.py` builds the tiny-random Qwen2.5-VL the tests use.
- `runner.py`: the loop, and `run_caption(config, run)`, the caption job's run function.
- `cli.py`: `ltxq caption`.

Only `dataset.py`, `clean.py` and `cli.py` import nothing heavy; torch loads in the rest.
"""
