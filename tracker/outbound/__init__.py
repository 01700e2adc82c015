"""Outgoing conversion postbacks: the HTTP request each traffic source wants, built without I/O."""
