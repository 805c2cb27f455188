"""`python -m deepfield` is the `deepfield` command."""

from deepfield.cli import main

if __name__ == "__main__":
    main()
