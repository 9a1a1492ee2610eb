import sys

from venet.cli import main

sys.exit(main())
