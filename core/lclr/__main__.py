"""``python -m lclr``: the CLI, as ``torchrun -m lclr run ...`` starts it."""

from lclr.cli import main

if __name__ == "__main__":
    main()
