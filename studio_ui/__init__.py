"""Streamlit glue for MixQuant Studio: the shared sidebar and the cached state the pages read.

Everything here is UI plumbing; every number comes from ``mixquant_core``.
"""
