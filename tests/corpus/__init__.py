"""The bad-input corpus: what each surface of the publisher must refuse, and how.

One module per surface, each a list of cases that one parametrised test runs:

* ``api``: the Python API (producer and drain functions), run by
  tests/integration/test_corpus_api.py;
* ``tasks``: messages to the Celery tasks, run against a real worker by
  tests/e2e/test_corpus_tasks.py;
* ``cli``: the `outbox` verbs, run by tests/integration/test_corpus_cli.py (the cases that
  tests/integration/test_cli*.py cover already are named there, not repeated);
* ``environment``: invalid settings, run against the `outbox` command by
  tests/unit/test_config.py and tests/integration/test_corpus_cli.py, and against real
  `celery worker` and `celery beat` processes by tests/e2e/test_corpus_environment.py.

Large values (megabytes of text, 10,000 levels of nesting) are built when a case runs, never
at import, so that collecting the suite stays cheap.
"""
