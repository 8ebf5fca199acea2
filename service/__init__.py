"""The FastAPI service that takes crane frames and answers with anomaly masks.

Filled by the inference-service issue; see DESIGN.md, "Frame path in the service".
"""
