"""``agentrl view``: a per-token credit viewer of a run's episodes in a web page (docs/viewer.md).

``data`` reads a run (or a ``compare`` output) lazily; ``server`` serves the page on 127.0.0.1 or writes
it as one self-contained HTML file; ``static/`` holds the page (plain HTML, CSS and JavaScript). Nothing
here imports torch.
"""
