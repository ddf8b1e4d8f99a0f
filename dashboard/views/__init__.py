"""Views are adapters: parse the request, call one selector or service, render."""
