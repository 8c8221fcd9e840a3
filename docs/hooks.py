"""MkDocs hooks: the configuration page's tables are rendered from ``tasks.settings.SETTINGS``,
the one declaration the code reads its settings from, so the page cannot drift from it."""

from __future__ import annotations

from tasks.settings import SETTINGS, TEST_ONLY, Setting

MARKERS = {
    "<!-- outbox:settings -->": "settings_table",
    "<!-- outbox:accepts -->": "accepts_table",
    "<!-- outbox:test-settings -->": "test_settings_table",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _deployment() -> list[Setting]:
    return [s for s in SETTINGS if not s.doc.startswith(TEST_ONLY)]


def settings_table() -> str:
    rows = [f"| `{s.variable}` | `{_cell(s.default)}` | {_cell(s.doc)} |" for s in _deployment()]
    return "\n".join(["| variable | default | what it does |", "| --- | --- | --- |", *rows])


def accepts_table() -> str:
    rows = [f"| `{s.variable}` | {s.kind} | {_cell(s.accepts)} |" for s in _deployment()]
    return "\n".join(["| variable | kind | accepts |", "| --- | --- | --- |", *rows])


def test_settings_table() -> str:
    rows = [
        f"| `{s.variable}` | {_cell(s.doc.removeprefix(TEST_ONLY))} | {_cell(s.accepts)} |"
        for s in SETTINGS
        if s.doc.startswith(TEST_ONLY)
    ]
    return "\n".join(["| variable | what it does | accepts |", "| --- | --- | --- |", *rows])


def render(markdown: str) -> str:
    """The page with each marker replaced by its table."""
    for marker, name in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, globals()[name]())
    return markdown


def on_page_markdown(markdown: str, **_: object) -> str:
    return render(markdown)
