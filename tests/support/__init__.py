"""Helpers shared by the test suites (servers, clients, settings builders)."""
