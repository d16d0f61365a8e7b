"""The `apeinxfs` command: mount the tree (see mount.py)."""
import sys

from . import mount


def main(argv: list[str] | None = None) -> int:
    return mount.main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
