"""Data utilities shared by the projects."""
