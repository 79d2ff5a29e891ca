"""Evaluation: sampling finished runs and comparing them."""
