"""Parley's protocol core: pure functions and state machines over bytes.

Nothing here opens a socket, a file or a database, or reads the clock: the
caller passes the time in. Terminals, tests and auditors all build on it.
"""
