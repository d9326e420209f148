"""Helpers shared by test suites: real services started by tests (Mosquitto), a test PKI."""
