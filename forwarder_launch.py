#!/usr/bin/env python3
"""Start the forwarder; see `forwarder_launch.py --help` and docs/reference/options.md."""

import sys
from pathlib import Path

# Allow running from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forwarder.app.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
