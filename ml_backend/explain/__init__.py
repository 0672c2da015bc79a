"""Explanations as numbers: captum attribution methods, evidence masks and spans, explanation-quality metrics."""
