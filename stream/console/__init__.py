"""The triage console (``stream console``): a web page over the alert, incident and
entity-alert topics, with verdicts and suppressions written back to the feedback and
suppression topics. ``store`` keeps a bounded view of recent history in SQLite,
``follower`` fills it from the topics, ``charts`` draws the pictures as SVG on the
server (no script library, nothing fetched from anywhere), ``app`` serves the pages."""
