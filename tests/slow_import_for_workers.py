"""A module whose import never ends by itself, for the test that a worker stopped during its
start-up imports ends at once: it writes the importing process's PID where the test waits for
it, then blocks as a long import (torch._dynamo's) would."""

import os
import pathlib
import time

pathlib.Path(os.environ["HPSEARCH_TEST_IMPORT_MARK"]).write_text(str(os.getpid()))
time.sleep(600)
