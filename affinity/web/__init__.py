"""The HTTP layer both roles share: responses and errors, the Sanic app set-up, TLS, metrics,
checked names and request-path forms."""
