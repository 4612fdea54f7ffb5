"""CONNECT tunnels (XenServer's style): ``CONNECT /consoleTunnel/<vmId>
?protocol=P[&token=T] HTTP/1.1`` on the mTLS port, ``200``, then raw bytes
both ways until either side closes.

``resource.py`` admits the request (role, token, endpoint); ``takeover.py``
takes the connection from the HTTP/1.1 channel; a graphics tunnel connects
to its endpoint (``connector.py``) and relays with backpressure both ways
(``relay.py``), after the server's own VNC authentication where the
endpoint has a password (``vncauth.py``); a serial tunnel is the console
itself, as a duplex stream without HTTP framing (``serial.py``).
``tunnel.py`` is what every tunnel shares: its log lines, its audit
records, and being cut when the server stops.
"""
