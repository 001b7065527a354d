"""Prompt templates: files, loading, rendering."""
