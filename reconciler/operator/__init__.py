"""The operator's desk: actions a person takes on one invoice, review item, task or provider
(actions.py), for the command line and the HTTP API alike."""
