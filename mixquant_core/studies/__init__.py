"""Stage 8, questions asked of many evaluations: which allocation wins (compare), which plan fits
an accuracy budget (tradeoff, target), which layer kind is most sensitive. Imports workspace and below."""
