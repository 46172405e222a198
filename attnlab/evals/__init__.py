"""Evaluators shared by experiments."""
