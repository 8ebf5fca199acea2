"""The HTTP API: one router per resource (frames, results, trucks, ops).

Beside them: the error table that turns the service's errors into answers (errors.py) and
the dependencies the routes share (deps.py).
"""
