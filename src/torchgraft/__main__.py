"""`python -m torchgraft ...` is the `graft` command."""

from torchgraft.cli import main

if __name__ == "__main__":
    main()
