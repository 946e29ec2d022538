"""TokenTrace's application layer: the command line (cli/), the Qt window (qt/), the PDF report
(report/) and what they share (present.py, session.py)."""
