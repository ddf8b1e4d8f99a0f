"""Draw a revision graph: lanes like `git log --graph`, and their SVG."""
