"""`python -m bertedge`: the same entry point as the `bertedge` console script."""

from .cli import entry

if __name__ == "__main__":
    entry()
