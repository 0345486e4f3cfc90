"""``python -m morphreg`` (also what ``torchrun -m morphreg train ...`` runs): the morphreg command line."""
from morphreg.cli.main import main

if __name__ == "__main__":
    main()
