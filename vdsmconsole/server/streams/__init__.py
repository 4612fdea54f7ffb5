"""Console streams over HTTP: GET follows, POST types, duplex does both."""
