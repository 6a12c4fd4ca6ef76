"""The Yoi Workspace Backend Django project."""
