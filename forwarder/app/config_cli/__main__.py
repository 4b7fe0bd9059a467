"""`python -m forwarder.app.config_cli`: the same as the `forwarder-config` command."""

import sys

from forwarder.app.config_cli.main import main

sys.exit(main())
