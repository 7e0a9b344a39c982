"""Seeded fuzz suite of the boundaries (issue 15): generators, runners, tests."""
