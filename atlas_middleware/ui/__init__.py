"""``atlas ui``: a review web page over the store: sessions, rewards, review actions, learning.

A small WSGI-free HTTP server on the standard library (``http.server``), pages rendered on the
server with Jinja2 (autoescaped), charts as server-rendered SVG, and one small script; nothing
to build and nothing fetched from the network. Binds 127.0.0.1 by default; off loopback it
requires a bearer token (the collector's rules). Every write is a POST with a CSRF token.
"""

from __future__ import annotations

from atlas_middleware.ui.server import UISettings, make_server

__all__ = ["UISettings", "make_server"]
