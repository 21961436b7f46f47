"""The operator API (docs/api.md): JSON under /api/v1 on its own listener, scoped API keys.

keys.py     pure: roles, scopes, tokens and their hashes
auth.py     who is asking: bearer tokens checked in constant time, failures per client address slowed down
server.py   the aiohttp application: routes, input parsed at the door, errors as one JSON shape
openapi.py  the OpenAPI 3.1 document the server serves (checked in as docs/api/openapi.json)
"""
