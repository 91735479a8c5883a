"""The report server (`dctrl serve`): read-only REST (JSON) and HTML reports, SpaceAPI.

bottle on waitress, GET and HEAD only. It reads the database through each component's query
functions (opened read-only: :mod:`actors.server.database`) and the event log from its files; it
imports no actor, no runtime and no zmq (the ``server`` contract in setup.cfg). Access is by API
token with scopes (:mod:`actors.server.tokens`).

- ``app.py``: the WSGI application: the method guard, authentication, errors, headers.
- ``api.py``: the REST routes and the OpenAPI document; ``pages.py``: the HTML; ``spaceapi.py``.
"""
