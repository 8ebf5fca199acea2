"""What the --help of every scrapscan console script has in common."""

from __future__ import annotations

import argparse


def command(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of console script `prog`; its --help opens with `doc`.

    `doc` is the command module's docstring, laid out as written: its usage lines and file
    lists keep their lines.
    """
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
