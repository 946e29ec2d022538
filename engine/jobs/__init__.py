"""Jobs over many cases: typed settings in, records, results and files out.

Callable from the command line, the window, a notebook or a distributed runner alike; nothing
here parses arguments, prints or draws. What needs Qt (PDF reports, plots) is handed in by the
caller as a :class:`~engine.jobs.batch.Reports`.
"""
