"""Reenactment methods, one folder each, behind one interface."""
