"""``python -m unbackdoor`` (also what ``torchrun -m unbackdoor`` runs)."""

import sys

from unbackdoor.cli import main

sys.exit(main())
