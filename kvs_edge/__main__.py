import sys

from kvs_edge.cli import main

sys.exit(main())
