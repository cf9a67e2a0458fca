"""``instruct-render serve``: a local web page to render a score, hear it, see it and re-render a passage."""
