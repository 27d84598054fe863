import sys

from hope_attr.cli.main import main

sys.exit(main())
