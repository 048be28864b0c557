"""``python -m jobs.preflight CONFIG``: this rank's part of the preflight (see :mod:`jobs.preflight.node`)."""

import os
import sys

from jobs.preflight.node import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)  # a check abandoned after its timeout (a hung NVML call) must not hold the process
