"""Console streams over HTTP: GET follows, POST types, duplex does both.

``GET /consoleStream/<vmId>`` registers a ``Follower`` as the response's push
producer.  The follower holds a cursor (an absolute offset) into what the
console retains and pulls from it while the client keeps up; when the
client's connection pushes back, the cursor simply stops moving.  So the
server never holds more for one client than ``[console]
client_buffer_bytes`` and one chunk beyond what it retains anyway (per
stream over HTTP/2: see http/h2channel.py), and a client that falls behind
everything retained has its response ended (its next request with its last
offset learns what it lost).

``POST`` is rendered as soon as the headers are in (see
``ConsoleRequest.dispatchEarly``): a ``BodyWriter`` hands each body chunk to
the guest as it arrives, and when the guest stops taking input it stops
reading the client (TCP backpressure on HTTP/1.1, flow control on HTTP/2).
"""
