import sys

from kvcache.testing.soak.runner import main

sys.exit(main())
