"""TokenTrace's application layer: the command line (and, later, the Qt GUI and PDF report)."""
