"""Answers over what the steps published: a user's nearest items (neighbours.py), generative
recommendations with their re-ranking reasons (recommend.py), a day's tables and runs (show.py)."""
