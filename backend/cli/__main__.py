"""`python -m backend.cli`: the `aesemo` command without its console script."""
import sys

from backend.cli import main

sys.exit(main())
