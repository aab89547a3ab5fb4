import sys

from qwen_np.apps.cli import main

sys.exit(main())
