"""The running terminal: storage, links, listeners and the delivery worker (I/O lives here)."""
