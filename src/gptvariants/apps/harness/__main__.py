"""``python -m gptvariants.apps.harness ARGS``: lm-eval's command line with the ``gptv`` model registered.

python -m gptvariants.apps.harness --model gptv --model_args run=RUN --tasks TASKS [lm-eval options]
"""

import sys

from . import INSTALL_HINT, run_lm_eval

if __name__ == "__main__":
    try:
        run_lm_eval(sys.argv[1:])
    except RuntimeError as e:
        if str(e) != INSTALL_HINT:
            raise
        sys.exit(f"error: {e}")
