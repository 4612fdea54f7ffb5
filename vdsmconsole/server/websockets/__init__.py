"""Websockets (RFC 6455) on the server's ports, through autobahn's protocol.

``wire.py`` hands an HTTP/1.1 request's connection over to a websocket
protocol with the limits (message size, pings, handshake deadlines) and the
subprotocol ``binary``; ``console.py`` connects such a socket to a console,
reusing the streams' ``Follower`` (output) and ``BodyWriter`` (input).
"""
