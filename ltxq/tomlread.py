"""Reading TOML: tomli where it is installed, else the standard library's tomllib.

They are one parser (tomllib is tomli, vendored into Python 3.11), so the results and the error
messages are the same; tomli's wheels are compiled with mypyc and parse a job file about 3x
faster, which is most of what the first `status` over 10,000 job files costs.
"""

from __future__ import annotations

try:
    from tomli import TOMLDecodeError, loads
except ImportError:  # a platform without tomli's wheel, or tomli not installed
    from tomllib import TOMLDecodeError, loads

__all__ = ["TOMLDecodeError", "loads"]
