"""A reusable Django app for persisted, classified, resumable jobs.

It knows nothing of the product that uses it: never import `comfyhub` from here.
"""
