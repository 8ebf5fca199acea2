"""Reading a JSON file with a message that names the file and says what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JSONFileError(ValueError):
    """The file is missing or is not JSON; the message names it."""


def read_json(path: Path, what: str) -> Any:
    """The parsed file; JSONFileError saying `what` it should be when it is missing."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise JSONFileError(f"{path}: no such file ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise JSONFileError(f"{path}: not readable JSON ({err})") from err
