"""The operator console: the duty officer's web application (see ``web.py``)."""
