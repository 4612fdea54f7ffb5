"""The ``[web]`` listener: console pages and websockets for browsers.

Its own TLS port with the server's certificate and no client certificate
asked; every page and websocket needs a token (``grants.py``), every
websocket an allowed ``Origin`` (``origin.py``).  ``site.py`` builds it.
"""
