"""The HTTP server (lvmkit serve) and the library pieces behind it."""
