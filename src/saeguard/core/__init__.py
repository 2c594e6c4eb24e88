"""The DSG core: SAE, statistics, selection, calibration, gate, fit, guardrail, artifact."""
