"""The stakeholders' report of a run: offline, code-hidden HTML pages that share one page shell.

``pages`` writes the shared assets of a run folder (``assets/report.css`` and one copy of
``assets/plotly.min.js``), the page shell (``page``: title, navigation, an optional rehearsal banner and a
coloured verdict box) and the phase pages made from executed notebooks (``render_phase_page``: Plotly
figures drawn from the shared script, errors shown as a sentence with the traceback folded away, long or
wide tables folded); ``glossary`` explains the report's terms in plain language on ``glossary.html``.
No page refers to a CDN or any other network address: a run folder opens from a disk or a file share.
"""
