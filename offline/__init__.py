"""Offline tooling: the program under Pulumi's own mock engine (tests and scripts/plan.py), and the
upstream Helm charts rendered with a real helm."""
