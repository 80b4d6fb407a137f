"""`python -m parsgd` is the same as the `parsgd` command."""
from parsgd.cli import main

if __name__ == "__main__":
    main()
