"""Notifications leaving the dashboard: their bodies, signatures and HTTP posts."""
