"""The HTTP side of the port: channels, deadlines, the site and its resources."""
