"""The FastAPI service that takes crane frames and answers with anomaly masks.

The path of a frame through it: README.md, section "Service".
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scrapscan")
except PackageNotFoundError:  # a source tree never installed
    __version__ = "0+unknown"
