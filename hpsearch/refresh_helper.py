"""The dashboard refresh that ends a search, done by a helper process started while the search
runs.

The first refresh in a process imports pandas, SciPy's statistics and plotly, which take longer
than the refresh itself; a search started from the command line always pays them, after its
last trial. The helper pays them during the search instead, on a core the search leaves spare
(it trains on one torch thread; with workers the parent only watches), then waits; once the
search has ended it reads the study, writes its note and figures, and exits, while the search's
process waits for it. A background thread would not do: an import holds the interpreter lock,
which the search's thread needs between its torch calls.

The helper runs in a session of its own, so the terminal's Ctrl-C reaches only the search,
which stops it; it ends with the search's process however that ends (`kill -9` included: the
kernel sends it SIGTERM then, on Linux; its stdin closes anyway). Where it could not start,
died or failed, the search's process refreshes the note itself, as it would without a helper,
so that an error is said as it always is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna

logger = logging.getLogger(__name__)

# -P: the current folder is not put on the helper's sys.path (a file there named like a module
# must not replace it); hpsearch's own folder is, as it is on the search's.
_SOURCE_ROOT = str(Path(__file__).resolve().parents[1])
REFRESH = b"refresh\n"
_HELPER_CODE = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from hpsearch.refresh_helper import serve; serve()")


class Refresh:
    """The refresh that ends the search of one study: `start()` starts the helper (once the
    search is underway), `finish(study)` refreshes the study's note and figures, by the
    helper where it runs, else in this process. A process that has refreshed a dashboard
    before has the imports already, and starts no helper."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        self.storage_url = storage_url
        self.study_name = study_name
        self._helper: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from hpsearch.storage.urls import IN_MEMORY

        if self.storage_url == IN_MEMORY or _refreshed_before():
            return  # a study only this process sees; or nothing left to import
        request = json.dumps({"storage": self.storage_url, "study": self.study_name,
                              "parent": os.getpid()}) + "\n"
        with contextlib.suppress(OSError):
            helper = subprocess.Popen(
                [sys.executable, "-P", "-c", _HELPER_CODE, _SOURCE_ROOT],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            assert helper.stdin is not None
            self._helper = helper
            helper.stdin.write(request.encode())
            helper.stdin.flush()

    def finish(self, study: optuna.Study) -> None:
        """Rewrite `study`'s note and figures from its trials as they are now."""
        if self._helper is not None:
            if self._helper_refreshed():
                return
            logger.debug("the dashboard refresh helper failed; refreshing in this process")
        from hpsearch.dashboard import refresh_dashboard

        refresh_dashboard(study)

    def close(self) -> None:
        """Stop the helper, if it still runs (the search failed or was interrupted)."""
        helper, self._helper = self._helper, None
        if helper is not None and helper.poll() is None:
            helper.kill()
            helper.wait()

    def _helper_refreshed(self) -> bool:
        helper = self._helper
        assert helper is not None and helper.stdin is not None
        try:
            with contextlib.suppress(OSError):  # it is gone already
                helper.stdin.write(REFRESH)
                helper.stdin.close()
            return helper.wait() == 0
        finally:
            self.close()


def _refreshed_before() -> bool:
    """Whether this process has what a refresh imports (it has refreshed a dashboard)."""
    return "hpsearch.dashboard" in sys.modules


def prepared_refresh(study: optuna.Study, told: Callable[[], bool]) -> None:
    """`prepare_refresh(study)`, then wait for `told()` (the search has ended) and, where it
    is true, refresh the study's note and figures from its trials as they are then."""
    from hpsearch.dashboard import prepare_refresh, refresh_dashboard
    from hpsearch.storage.port import port_for_study

    prepare_refresh(study)
    if told():
        port_for_study(study).refresh()  # the trials the search ended since
        refresh_dashboard(study)


def serve() -> None:
    """The helper: read the study to refresh from stdin (one JSON line: storage URL and study
    name), import what a refresh needs and compute the study's note once (`prepare_refresh`),
    then, when stdin says REFRESH, refresh it and exit 0 (1 if that failed). A stdin closed
    before that (the search ended otherwise) exits 0 without writing anything."""
    code = 1
    try:
        request = sys.stdin.buffer.readline()
        if request:
            from hpsearch.search.workers import stop_with_parent

            named = json.loads(request)
            stop_with_parent(named["parent"])  # SIGTERM ends the helper with its search
            from hpsearch.studies import load_stored_study

            prepared_refresh(load_stored_study(named["study"], named["storage"]),
                             told=lambda: sys.stdin.buffer.readline() == REFRESH)
        code = 0
    except BaseException:  # any failure: the search's process refreshes instead
        code = 1
    from hpsearch.fast_exit import exit_without_teardown

    exit_without_teardown(code)
