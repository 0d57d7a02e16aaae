"""The werkbund dashboard: the platform in a browser, served from the user's own machine.

`werkbund dashboard` starts it (127.0.0.1 by default), logged in to whichever platform the user
names; it drives the same Python API as the CLI and the notebooks, runs the aggregator and the
participants as background work on this machine and reads datasets from this machine's files.
See docs/dashboard.md.

- :mod:`.app`: the Flask app (sessions, CSRF, security headers); :mod:`.server`: serving it;
- :mod:`.views_auth`, :mod:`.views_tasks`, :mod:`.views_datasets`: the pages; :mod:`.api`: the JSON
  endpoints the pages poll, with their OpenAPI spec;
- :mod:`.forms`: the forms' models, the algorithms' options and redirect targets; :mod:`.live`: a
  task's state; :mod:`.datasets`: registered datasets; :mod:`.runs`: background runs;
  :mod:`.sessions`: browser sessions.

Imports go one way: ``server`` → ``app`` → ``api`` and the ``views_*`` (each has a
``register(app)`` that ``create_app`` calls) → ``forms``, ``live``, ``datasets``, ``sessions``.
No module imports ``app`` but ``server``, and none imports through this package (it only
re-exports), so the package has no import cycle (tests/unit/test_import_graph.py).
"""
from werkbund.dashboard.app import DashboardSettings, create_app
from werkbund.dashboard.server import DashboardServer

__all__ = ["DashboardServer", "DashboardSettings", "create_app"]
