"""Writes: every change to the dashboard's state goes through a function in these modules."""
