"""torchrun as `kiln train ... train.devices=N` starts it: torch's launcher, with a Ctrl-C that
ends it the way a one-process run ends.

On Ctrl-C torchrun passes the signal on to every process (they stop at the same step, rank 0
saves last.pt and prints the resume command), waits for them, then raises SignalException:
uncaught, a traceback and exit code 1 after a clean stop. Here it is exit code 128 + the signal
(130 for Ctrl-C), with nothing more said.
"""

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

if __name__ == "__main__":
    try:
        main()
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
