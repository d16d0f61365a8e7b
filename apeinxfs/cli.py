"""The `apeinxfs` command: mount the tree (mount.py), or a subcommand.

    apeinxfs MOUNTPOINT [-o OPTS] [-f] [--config FILE] [--state-dir DIR]
    apeinxfs sim WORKLOAD.csv [...]          the discrete-event simulator (simulate.py)
    apeinxfs replay --verify STATE_DIR       re-run a journal and check it (verify.py)
"""
import importlib
import sys

from . import mount

SUBCOMMANDS = {"sim": "apeinxfs.simulate", "replay": "apeinxfs.verify"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    return mount.main(argv)


if __name__ == "__main__":
    sys.exit(main())
