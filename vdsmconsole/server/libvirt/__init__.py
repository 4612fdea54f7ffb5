"""libvirt discovery: every running domain's serial console and graphics
registered under its UUID, kept in step by libvirt's lifecycle events."""
