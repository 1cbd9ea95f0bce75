import sys

from emaprobe.cli import main

sys.exit(main())
