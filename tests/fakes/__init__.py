"""Fake payment-provider servers on real sockets, checked against the providers' published OpenAPI."""
