"""Corrections in: the webhook intake, the annotation store, parsing Label Studio annotations into feedback, generalising marks."""
